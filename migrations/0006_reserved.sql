-- Placeholder: number 0006 is assigned to another branch (the lead merges it). Migrations must be
-- numbered without gaps, so this branch keeps the number free with an empty file; delete this file
-- when the other branch's 0006 is merged.
SELECT 1;
