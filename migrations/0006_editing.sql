-- Editing (issue 12): zoom out, pan and vary region are image-to-image jobs with a mask; the edit
-- (its kind, where the source sits on the canvas, the repainted box) is kept as JSON so /job shows
-- it and /reroll reproduces it. Remix is a per-member choice.
ALTER TABLE jobs ADD COLUMN edit TEXT;
CREATE TABLE member_settings (
    guild_id INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    remix INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (guild_id, user_id)
);
