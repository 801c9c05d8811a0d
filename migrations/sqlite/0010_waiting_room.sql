-- A campaign's waiting room (contract v1.1 `queue`): both NULL when it has none. Tickets
-- themselves live in the stock engine only (see the README's "Waiting room").
ALTER TABLE campaigns ADD COLUMN queue_admit_per_second BIGINT;
ALTER TABLE campaigns ADD COLUMN queue_pass_seconds BIGINT;
