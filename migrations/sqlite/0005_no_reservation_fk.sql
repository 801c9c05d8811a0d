-- Postgres drops the foreign key from reservations to campaigns here (a per-row trigger that
-- guarded nothing the persister's fence does not). SQLite checks it in-process at a fraction
-- of the cost, and dropping it would mean rebuilding the table, so SQLite keeps it; the step
-- exists so both folders keep the same numbers.
SELECT 1;
