-- The prompt language (issue 17): seamless tiling, the prompt as the member typed it (before
-- inline flags, permutations and styles were taken out or applied) and the styles applied.
ALTER TABLE jobs ADD COLUMN tile INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN typed_prompt TEXT;
ALTER TABLE jobs ADD COLUMN styles TEXT NOT NULL DEFAULT '[]';  -- JSON list of style names
