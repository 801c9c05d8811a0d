#!/usr/bin/env bash
# loadtest/copy-vs-unnest.sh: prints the time of each transaction (5 runs each, alternating),
# on the local Postgres (database test, schema cvu made and dropped; /tmp/cvu.tsv).
# Server-side cost of writing 20,000 reservation rows: UNNEST upsert vs COPY into a staging
# table + INSERT ... SELECT ... ON CONFLICT. Fresh table each run, 5 runs each, alternating.
psql -h 127.0.0.1 -U postgres -d test -q <<'SQL' >/dev/null
DROP SCHEMA IF EXISTS cvu CASCADE; CREATE SCHEMA cvu;
SET search_path = cvu;
CREATE TABLE src AS SELECT 'res_' || g || '_big' AS id, 'big'::text AS c, 'u' || g AS u, 1::bigint AS q, 'held'::text AS s,
  1764140000000::bigint AS cr, 1764140900000::bigint AS ex, NULL::text AS gid, '3:s/x/k' || g AS k, '1:u' || g AS fp,
  1764140000000::bigint AS em, g::bigint AS es FROM generate_series(1, 20000) g;
\copy src TO '/tmp/cvu.tsv'
CREATE TABLE arrs AS SELECT array_agg(id) a1, array_agg(c) a2, array_agg(u) a3, array_agg(q) a4, array_agg(s) a5, array_agg(cr) a6, array_agg(ex) a7, array_agg(gid) a8, array_agg(k) a9, array_agg(fp) a10, array_agg(em) a11, array_agg(es) a12 FROM src;
SQL
for run in 1 2 3 4 5; do
for how in unnest copy; do
psql -h 127.0.0.1 -U postgres -d test -q -v how=$how <<'SQL' | awk -v h=$how '/^Time/ {s+=$2} END {printf "%s %.1f ms\n", h, s}'
SET search_path = cvu;
DROP TABLE IF EXISTS r; CREATE TABLE r (id text primary key, campaign_id text not null, user_id text not null, quantity bigint not null, status text not null, created_at_ms bigint not null, expires_at_ms bigint not null, group_id text, idempotency_key text, fingerprint text, event_ms bigint not null, event_seq bigint not null);
CREATE INDEX ON r (campaign_id, status);
\set u 'INSERT INTO r SELECT x.* FROM arrs, UNNEST(a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12) AS x ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status'
\timing on
BEGIN;
SELECT CASE WHEN :'how' = 'unnest' THEN 1 ELSE 0 END AS is_unnest \gset
\if :is_unnest
:u;
\else
CREATE TEMP TABLE stage (LIKE r) ON COMMIT DROP;
\copy stage FROM '/tmp/cvu.tsv'
INSERT INTO r SELECT * FROM stage ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status;
\endif
COMMIT;
SQL
done; done
psql -h 127.0.0.1 -U postgres -d test -qc "DROP SCHEMA cvu CASCADE" 2>/dev/null
