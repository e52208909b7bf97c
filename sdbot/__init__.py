"""The floor: settings, shared types, the SQLite store and migrations. Imports nothing from
`generation` or `bot`."""
