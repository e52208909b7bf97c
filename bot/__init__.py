"""The Discord layer: client, admission, delivery, render, views, errors, permissions, attachments,
one extension per command under `exts/`, and the composition root (`app`, `cli`) on top. Imports
`generation` and `sdbot`; nothing imports it."""
