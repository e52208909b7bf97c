-- Jobs, their images, quotas, the usage ledger and the moderator audit log.
-- Times are Unix seconds (REAL); Discord ids are INTEGER snowflakes.

CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('imagine', 'variation', 'upscale', 'reroll')),
    pipeline TEXT NOT NULL CHECK (pipeline IN ('text2img', 'img2img', 'upscale')),
    guild_id INTEGER NOT NULL,
    channel_id INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    prompt TEXT NOT NULL DEFAULT '',
    negative_prompt TEXT NOT NULL DEFAULT '',
    seeds TEXT NOT NULL,                 -- JSON list, one seed per image
    steps INTEGER NOT NULL,
    guidance REAL NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    strength REAL,
    scheduler TEXT,
    model_id TEXT NOT NULL,
    model_revision TEXT,
    source_job_id INTEGER REFERENCES jobs (id),
    source_index INTEGER,
    source_path TEXT,                    -- the picture a variation or upscale starts from
    return_flagged INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    status_reason TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    -- Where the result goes: the interaction (valid 15 minutes) or, later, the channel.
    application_id INTEGER,
    interaction_token TEXT,
    response_message_id INTEGER,
    result_message_id INTEGER
);
CREATE INDEX jobs_by_status ON jobs (status, id);
CREATE INDEX jobs_by_member ON jobs (guild_id, user_id, id);

CREATE TABLE images (
    job_id INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,                -- 0-based position in the job
    seed INTEGER NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    path TEXT,                           -- NULL when the pixels were withheld
    format TEXT,
    flagged INTEGER NOT NULL DEFAULT 0,
    nsfw_score REAL,
    record TEXT NOT NULL,                -- JSON reproducibility record
    PRIMARY KEY (job_id, idx)
);

CREATE TABLE guild_settings (
    guild_id INTEGER PRIMARY KEY,
    images_per_day INTEGER CHECK (images_per_day IS NULL OR images_per_day >= 0),
    allow_nsfw_spoilers INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE quota_overrides (
    guild_id INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    images_per_day INTEGER CHECK (images_per_day IS NULL OR images_per_day >= 0),  -- NULL: unlimited
    PRIMARY KEY (guild_id, user_id)
);

-- Charges are positive, refunds negative; today's usage is the sum since 00:00 UTC.
CREATE TABLE usage_ledger (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    guild_id INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    job_id INTEGER REFERENCES jobs (id),
    images INTEGER NOT NULL,
    reason TEXT NOT NULL CHECK (reason IN ('charge', 'refund', 'reset')),
    created_at REAL NOT NULL
);
CREATE INDEX usage_by_member ON usage_ledger (guild_id, user_id, created_at);

CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    guild_id INTEGER NOT NULL,
    moderator_id INTEGER NOT NULL,
    action TEXT NOT NULL,
    target_user_id INTEGER,
    details TEXT NOT NULL DEFAULT '{}',  -- JSON
    created_at REAL NOT NULL
);
CREATE INDEX audit_by_guild ON audit_log (guild_id, id);
