-- The persister's fence already applies only events of campaigns the database has (it reads
-- and share-locks their rows in the same transaction; events of unknown campaigns go to
-- dead_events), and campaigns are never deleted, so the foreign key from reservations to
-- campaigns guarded nothing more while it cost a per-row trigger on every upsert: draining a
-- full stream wrote 53.9k events/s with it and 61.3k events/s without it (loadtest/bench.sh's
-- persister-alone figure, one run each, issue 13).
ALTER TABLE reservations DROP CONSTRAINT IF EXISTS reservations_campaign_id_fkey;
