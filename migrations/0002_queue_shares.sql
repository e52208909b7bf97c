-- A member's share of the GPU in the fair-share queue (1: an equal share; 2: twice as much).
CREATE TABLE queue_shares (
    guild_id INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    weight REAL NOT NULL CHECK (weight > 0),
    PRIMARY KEY (guild_id, user_id)
);
