-- When retention (SDBOT_KEEP_IMAGES_DAYS) deleted an image's file; the row and its path stay, so the
-- image can be made again from its seed at the same place.
ALTER TABLE images ADD COLUMN pruned_at REAL;
