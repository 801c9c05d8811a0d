-- When an ended campaign left the stock engine entirely; from then on it is answered from
-- the database alone and never rebuilt into the engine.
ALTER TABLE campaigns ADD COLUMN archived_at_ms BIGINT;
