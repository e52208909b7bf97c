-- The model catalogue (issue 13): the catalogue model a job ran on (NULL: the only model,
-- SDBOT_MODEL_ID), its LoRAs, and a server's default model chosen by its moderators.
ALTER TABLE jobs ADD COLUMN model_name TEXT;
ALTER TABLE jobs ADD COLUMN loras TEXT NOT NULL DEFAULT '[]';  -- JSON list of [name, weight]
ALTER TABLE guild_settings ADD COLUMN default_model TEXT;
