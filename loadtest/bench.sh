#!/usr/bin/env bash
# The flash-sale benchmark: builds release binaries, starts flashsale (Redis engine, fresh
# Postgres schema, per-user rate limit off), runs the scenarios and their baselines in ONE
# run on this machine, and prints one line per ratio. Everything here shares the same cores
# (generator, service, Redis, Postgres), so only the ratios are meaningful.
#
#   loadtest/bench.sh                # defaults below
#   ATTEMPTS=50000 CONCURRENCY=32 loadtest/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ATTEMPTS=${ATTEMPTS:-100000}          # success path and HTTP floor
SALE_ATTEMPTS=${SALE_ATTEMPTS:-200000} # the real sale
SALE_USERS=${SALE_USERS:-50000}
SALE_STOCK=${SALE_STOCK:-1000}
CONCURRENCY=${CONCURRENCY:-64}
OPEN_SECONDS=${OPEN_SECONDS:-10}
REDIS=${REDIS:-127.0.0.1:6379}
out=${OUT:-target/bench}
mkdir -p "$out"

scripts/ensure-services >&2
cargo build --release --locked --quiet -p flashsale -p loadtest
command -v redis-benchmark >/dev/null || { echo "bench.sh: redis-benchmark (Debian redis-tools) is needed" >&2; exit 1; }

pids=()
ns=""
# Stops what the run started and removes what it wrote (its Postgres schema, its Redis keys):
# the servers are shared, and a run writes hundreds of thousands of reservations to each.
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "$ns" ]; then
    psql -h 127.0.0.1 -U postgres -d test -qc "DROP SCHEMA IF EXISTS $ns CASCADE" 2>/dev/null || true
    rcli --scan --pattern "$ns*" | xargs -r -n 1000 redis-cli -h "${REDIS%:*}" -p "${REDIS#*:}" UNLINK > /dev/null || true
  fi
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rcli() { redis-cli -h "${REDIS%:*}" -p "${REDIS#*:}" "$@"; }
# Sum of calls and of usec over commandstats entries matching a pattern.
stats() { rcli INFO commandstats | tr -d '\r' | awk -F'[:=,]' -v pat="$1" '$0 ~ pat { c += $3; u += $5 } END { printf "%d %d\n", c, u }'; }

port=$(free_port)
ns="bench$(date +%s)"
psql -h 127.0.0.1 -U postgres -d test -qc "CREATE SCHEMA $ns"
FLASHSALE_LISTEN=127.0.0.1:$port FLASHSALE_REDIS_URL="redis://$REDIS" FLASHSALE_REDIS_NAMESPACE="$ns" \
FLASHSALE_DATABASE_URL="postgres://postgres@127.0.0.1:5432/test?options=-csearch_path%3D$ns" \
FLASHSALE_ADMIN_TOKENS=adm FLASHSALE_STORE_TOKENS=sto FLASHSALE_USER_RATE_PER_SECOND=0 \
  target/release/flashsale > "$out/flashsale.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do curl -fs -o /dev/null "http://127.0.0.1:$port/healthz" && break; sleep 0.1; done
lt() { target/release/loadtest --url "http://127.0.0.1:$port" "$@"; }
# Waits until the persister has written every event so far (at most 5 minutes).
drain() {
  for _ in $(seq 1 600); do
    curl -fs "http://127.0.0.1:$port/metrics" | grep -q '^flashsale_persister_backlog_events 0$' && return
    sleep 0.5
  done
}
rate() { python3 -c "import json,sys; print(round(json.load(open(sys.argv[1]))$2))" "$1"; }

echo "== baseline: HTTP floor (GET /healthz, closed loop, $CONCURRENCY workers)" >&2
lt --json "$out/healthz.json" healthz --attempts "$ATTEMPTS" --concurrency "$CONCURRENCY" >&2
healthz=$(rate "$out/healthz.json" "['attempts_per_second']")

echo "== baseline: Redis running lua/reserve.lua by EVALSHA (redis-benchmark, $CONCURRENCY clients)" >&2
sha=$(rcli SCRIPT LOAD "$(cat lua/reserve.lua)")
k="$ns-raw:{c:raw}"
rcli HSET "$k" kind flash_sale starts '' ends '' limit 1000000000 hold 900 available 1000000000000 held 0 records 0 > /dev/null
raw() { # pipeline depth
  redis-benchmark -h "${REDIS%:*}" -p "${REDIS#*:}" -n "$ATTEMPTS" -c "$CONCURRENCY" -P "$1" -r 1000000000 --csv \
    EVALSHA "$sha" 4 "$k" "$k:exp" "$k:r:__rand_int__" "$k:events" \
    "$(date +%s%3N)" "user__rand_int__" 1 "key__rand_int__" fp "r__rand_int__" \
    | tail -1 | cut -d, -f2 | tr -d '"' | cut -d. -f1
}
rcli CONFIG RESETSTAT > /dev/null
raw_unpipelined=$(raw 1)
# The script's own cost with only redis-benchmark beside it: commandstats time is wall time
# inside Redis, so under the full scenario (every core busy) it also counts preemption.
raw_script_usec=$(stats '^cmdstat_evalsha' | awk '{ printf "%.2f", $2 / ($1 > 0 ? $1 : 1) }')
raw_pipelined=$(raw 16)
rcli --scan --pattern "$ns-raw:*" | xargs -r -n 1000 redis-cli -h "${REDIS%:*}" -p "${REDIS#*:}" UNLINK > /dev/null

# Throughput scenarios hold for 900 s, as a real sale does: their holds do not expire while
# they are measured (the verified sale below exercises expiry).
echo "== scenario: success path (huge stock: every attempt reserves)" >&2
before=$(stats '^cmdstat_evalsha')
lt --json "$out/success.json" sale --campaign success --stock 1000000000 --limit 1000000 --users "$ATTEMPTS" \
  --attempts "$ATTEMPTS" --concurrency "$CONCURRENCY" --hold-seconds 900 --no-verify >&2
after=$(stats '^cmdstat_evalsha')
success=$(rate "$out/success.json" "['report']['attempts_per_second']")
script_usec=$(python3 -c "b='$before'.split(); a='$after'.split(); print(round((int(a[1])-int(b[1]))/max(1,int(a[0])-int(b[0])),2))")

echo "== scenario: real sale (stock $SALE_STOCK, $SALE_ATTEMPTS attempts from $SALE_USERS users), verified" >&2
# Let the persister drain the success path's events, then measure the idle background
# (persister polls, reaper, gate refresher, sampler) over 5 s.
drain
sleep 1
idle_before=$(stats '^cmdstat_evalsha'); sleep 5; idle_after=$(stats '^cmdstat_evalsha')
background_per_second=$(python3 -c "print(($(echo $idle_after | cut -d' ' -f1)-$(echo $idle_before | cut -d' ' -f1))/5)")
before=$(stats '^cmdstat_'); before_scripts=$(stats '^cmdstat_evalsha')
start_ns=$(date +%s%N)
lt --json "$out/sale.json" sale --campaign sale --stock "$SALE_STOCK" --limit 1 --users "$SALE_USERS" \
  --attempts "$SALE_ATTEMPTS" --concurrency "$CONCURRENCY" --hold-seconds 900 --no-verify >&2
after=$(stats '^cmdstat_'); after_scripts=$(stats '^cmdstat_evalsha')
burst_seconds=$(python3 -c "print(($(date +%s%N)-$start_ns)/1e9)")
# Two figures: every command Redis ran during the burst (commands inside scripts included,
# the successful reserves' writes and their persistence too) per refused attempt; and the
# script calls that refusals caused: EVALSHA calls less one per successful reserve, less the
# idle background's EVALSHA rate (reaper) over the burst.
per_refused=$(python3 - "$out/sale.json" "$before" "$after" "$before_scripts" "$after_scripts" "$background_per_second" "$burst_seconds" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))["report"]
refused = sum(n for outcome, n in report["outcomes"].items() if outcome != "reserved")
reserved = report["outcomes"].get("reserved", 0)
calls = int(sys.argv[3].split()[0]) - int(sys.argv[2].split()[0])
scripts = int(sys.argv[5].split()[0]) - int(sys.argv[4].split()[0])
background = float(sys.argv[6]) * float(sys.argv[7])
print(f"{max(0.0, scripts - reserved - background) / max(1, refused):.4f} {calls / max(1, refused):.4f}")
PY
)
echo "== scenario: the same sale settled and verified (confirm 60%, cancel 20%, expire the rest)" >&2
lt --json "$out/verified.json" sale --campaign verified --stock "$SALE_STOCK" --limit 1 --users "$SALE_USERS" \
  --attempts 20000 --concurrency "$CONCURRENCY" --hold-seconds 3 >&2

echo "== scenario: sold out (every attempt refused), next to a fresh HTTP floor" >&2
lt --json "$out/soldout-setup.json" sale --campaign soldout --stock 1 --limit 1 --users 1 --attempts 1 --concurrency 1 --hold-seconds 3600 --no-verify > /dev/null
# The floor again, right before: the earlier scenarios leave the machine busier (Postgres
# writing their events), and a ratio is only fair between neighbours.
lt --json "$out/healthz-again.json" healthz --attempts "$ATTEMPTS" --concurrency "$CONCURRENCY" >&2
healthz_again=$(rate "$out/healthz-again.json" "['attempts_per_second']")
lt --json "$out/soldout.json" sale --campaign soldout --existing --stock 1 --limit 1 --users "$ATTEMPTS" \
  --attempts "$ATTEMPTS" --concurrency "$CONCURRENCY" --no-verify >&2
soldout=$(rate "$out/soldout.json" "['report']['attempts_per_second']")

# The peak again, right before, once the persister has drained what the earlier scenarios
# left: 80% of a peak measured on a fresher machine would be 100% of this one.
drain
lt --json "$out/peak-again.json" sale --campaign peak --stock 1000000000 --limit 1000000 --users "$ATTEMPTS" \
  --attempts $(( ATTEMPTS / 2 )) --concurrency "$CONCURRENCY" --hold-seconds 900 --no-verify >&2
peak_again=$(rate "$out/peak-again.json" "['report']['attempts_per_second']")
drain
open_rate=$(( peak_again * 8 / 10 ))
echo "== scenario: open loop at 80% of the success-path peak ($open_rate/s for ${OPEN_SECONDS}s)" >&2
# The generator reports its own lateness beside the latency (`send lag`): the part of the
# tail that is the generator's, not the service's.
lt --json "$out/open.json" sale --campaign open --stock 1000000000 --limit 1000000 --users 100000000 \
  --attempts $(( open_rate * OPEN_SECONDS )) --rate "$open_rate" --concurrency 512 --hold-seconds 900 --no-verify >&2
open_p99=$(rate "$out/open.json" "['report']['latency']['p99_us']")
open_lag_p99=$(rate "$out/open.json" "['report']['send_lag']['p99_us']")

ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
echo
echo "flashsale bench ($(nproc) cores, concurrency $CONCURRENCY; everything on one machine)"
echo "success-path reserve / healthz            = $(ratio "$success" "$healthz")   ($success/s vs $healthz/s; target >= 0.5)"
echo "sold-out refusals / healthz               = $(ratio "$soldout" "$healthz_again")   ($soldout/s vs $healthz_again/s measured just before; target >= 0.9)"
echo "reserve script usec_per_call (raw)        = $raw_script_usec µs   (INFO commandstats, EVALSHA, during the redis-benchmark baseline; target <= 6)"
echo "reserve script usec_per_call (success)    = $script_usec µs   (the same, during the success path, every core busy)"
echo "redis round trips per refused attempt     = ${per_refused% *}   (reserve-script calls caused by refusals; all commands incl. inside scripts and persistence: ${per_refused#* }; target <= 0.01)"
echo "open-loop p99 at 80% of peak              = $open_p99 µs   ($open_rate/s = 80% of $peak_again/s measured just before; of it, the generator's own send lag p99 $open_lag_p99 µs; target <= 5000)"
echo "success-path reserve / raw EVALSHA        = $(ratio "$success" "$raw_unpipelined")   (redis-benchmark unpipelined $raw_unpipelined/s)"
echo "success-path reserve / raw EVALSHA -P 16  = $(ratio "$success" "$raw_pipelined")   (redis-benchmark pipelined $raw_pipelined/s)"
echo "verified sale: $(python3 -c "import json; v=json.load(open('$out/verified.json'))['verification']; print('all checks passed' if all(c[1] for c in v['checks']) else 'FAILED')")"
echo "reports: $out/*.json"
