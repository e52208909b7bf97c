-- /describe (issue 19): a caption job is a job kind ('describe') and pipeline ('caption') of its
-- own; its prompt suggestions are kept so the 1-4 buttons work after a restart.
-- SQLite cannot ALTER a CHECK constraint: widening one by editing the stored schema is the
-- documented way (sqlite.org/lang_altertable.html, "writable_schema"); RESET reloads it.
PRAGMA writable_schema = ON;
UPDATE sqlite_schema
SET sql = replace(replace(sql,
    'CHECK (kind IN (''imagine'', ''variation'', ''upscale'', ''reroll''',
    'CHECK (kind IN (''imagine'', ''variation'', ''upscale'', ''reroll'', ''describe'''),
    'CHECK (pipeline IN (''text2img'', ''img2img'', ''upscale''',
    'CHECK (pipeline IN (''text2img'', ''img2img'', ''upscale'', ''caption''')
WHERE type = 'table' AND name = 'jobs';
PRAGMA writable_schema = RESET;

CREATE TABLE describe_suggestions (
    job_id INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,                -- 0-based; button n uses idx n - 1
    prompt TEXT NOT NULL,
    PRIMARY KEY (job_id, idx)
);
