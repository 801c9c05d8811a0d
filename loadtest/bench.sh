#!/usr/bin/env bash
# The flash-sale benchmark, side by side with the baseline to beat: the OpenResty peer in
# ../shared/peer (nginx + ngx_lua, one EVALSHA per attempt, no durable pipeline). In ONE run,
# on this machine: a private Redis both use, flashsale (Redis engine, Postgres store,
# persister on) and the peer driven by the same wrk line (the peer's reserve.wrk.lua), then
# flashsale's own figures. Everything shares the same cores (wrk, service, Redis, Postgres),
# so only figures measured in the same run are compared, and every figure comes with the
# CPU each process spent per request, which says what caps it.
#
#   loadtest/bench.sh                      # defaults below
#   ROUNDS=1 SECONDS_PER_RUN=4 loadtest/bench.sh
#   BASELINE_BIN=/tmp/flashsale-before loadtest/bench.sh   # also an earlier build, alternating
#
# Needs (Debian packages, installed here when missing): nginx-light libnginx-mod-http-lua
# lua-nginx-redis lua-cjson wrk redis-server redis-tools postgresql-client.
set -euo pipefail
cd "$(dirname "$0")/.."
here=$(pwd)

ROUNDS=${ROUNDS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-6}
CONNECTIONS=${CONNECTIONS:-64}
OPEN_SECONDS=${OPEN_SECONDS:-8}
PEER=${PEER:-$here/../shared/peer}
# Another flashsale build (say, main before a change) measured in the same rounds, on the same
# Redis and database, alternating with this one.
BASELINE_BIN=${BASELINE_BIN:-}
out=${OUT:-target/bench}
mkdir -p "$out"
out=$(cd "$out" && pwd)

scripts/ensure-services >&2
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx-light)
[ -e /usr/lib/nginx/modules/ngx_http_lua_module.so ] || need+=(libnginx-mod-http-lua)
[ -e /usr/share/lua/5.1/nginx/redis.lua ] || need+=(lua-nginx-redis)
[ -e /usr/lib/x86_64-linux-gnu/lua/5.1/cjson.so ] || dpkg -s lua-cjson >/dev/null 2>&1 || need+=(lua-cjson)
if [ ${#need[@]} -gt 0 ]; then
  echo "bench.sh: installing ${need[*]}" >&2
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
  # The package starts nginx on port 80; the peer runs its own.
  service nginx stop >/dev/null 2>&1 || true
fi
cargo build --release --locked --quiet -p flashsale -p loadtest

work=$(mktemp -d)
pids=()
schema="bench$(date +%s)"
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$work/ng/nginx.pid" ] && kill "$(cat "$work/ng/nginx.pid")" 2>/dev/null || true
  [ -n "${rport:-}" ] && redis-cli -p "$rport" shutdown nosave >/dev/null 2>&1 || true
  wait 2>/dev/null || true
  psql -h 127.0.0.1 -U postgres -d test -qc "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The private Redis both use (no persistence, like the machine's).
rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" --daemonize yes \
  --logfile "$work/redis.log" --pidfile "$work/redis.pid"
for _ in $(seq 50); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
rcli() { redis-cli -p "$rport" "$@"; }
redis_pid=$(cat "$work/redis.pid")

psql -h 127.0.0.1 -U postgres -d test -qc "CREATE SCHEMA $schema"
database="postgres://postgres@127.0.0.1:5432/test?options=-csearch_path%3D$schema"
# Starts a flashsale instance on a free port; prints "port pid".
start_flashsale() { # extra env assignments...
  local port; port=$(free_port)
  env FLASHSALE_LISTEN=127.0.0.1:$port FLASHSALE_REDIS_URL="redis://127.0.0.1:$rport" \
    FLASHSALE_DATABASE_URL="$database" FLASHSALE_ADMIN_TOKENS=adm FLASHSALE_STORE_TOKENS=sto \
    FLASHSALE_USER_RATE_PER_SECOND=0 "$@" "${bin:-target/release/flashsale}" >> "$out/flashsale-$port.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$port/healthz" && break; sleep 0.1; done
  echo "$port $pid"
}
read -r fport fpid < <(start_flashsale)
pids+=("$fpid")
furl="http://127.0.0.1:$fport"
admin() { curl -fs -o /dev/null -X POST "$furl$1" -H 'authorization: Bearer adm' -H 'content-type: application/json' -H "idempotency-key: $RANDOM$RANDOM" -d "$2"; }
admin /v1/campaigns '{"id":"big","kind":"flash_sale","sku":"bench","stock":1000000000,"per_user_limit":1000000,"hold_seconds":900}'
admin /v1/campaigns '{"id":"gone","kind":"flash_sale","sku":"bench","stock":1,"per_user_limit":1,"hold_seconds":900}'
curl -fs -o /dev/null -X POST "$furl/v1/campaigns/gone/reservations" -H 'authorization: Bearer sto' \
  -H 'content-type: application/json' -H 'idempotency-key: first' -d '{"user_id":"first","quantity":1}'

# The peer on the same Redis.
pport=$(free_port)
bash "$PEER/run-peer.sh" "$pport" "$rport" "$work/ng"
rcli HSET "{c:big}:meta" available 1000000000 limit 1000000000 starts 0 ends 9999999999999 hold 900 >/dev/null
rcli HSET "{c:gone}:meta" available 0 limit 1 starts 0 ends 9999999999999 hold 900 >/dev/null
purl="http://127.0.0.1:$pport"

# CPU seconds (user + system) of a process and its threads / of every process named $1.
cpu_of_pid() { awk '{ sub(/^[^)]*\) /, ""); print ($12 + $13) / 100 }' "/proc/$1/stat"; }
cpu_of_name() {
  local total=0 p
  for p in $(pgrep -x "$1" || true); do total=$(python3 -c "print($total + $(cpu_of_pid "$p" 2>/dev/null || echo 0))"); done
  echo "$total"
}
# Every command Redis ran, in µs (INFO commandstats), scripts' inner calls counted once.
redis_usec() { rcli INFO commandstats | tr -d '\r' | awk -F'[:=,]' '/^cmdstat_/ { u += $5 } END { printf "%d\n", u }'; }
redis_memory() { rcli INFO memory | tr -d '\r' | awk -F: '/^used_memory:/ { print $2 }'; }
snapshot() { echo "$(cpu_of_pid "$1") $(cpu_of_pid "$redis_pid") $(cpu_of_name postgres) $(cpu_of_name nginx) $(redis_usec)"; }

# wrk_run NAME URL PATH [PID]: one wrk run against the flashsale process PID (default: this
# build's); appends "name rate requests non2xx and CPU per request" to $out/runs.txt.
wrk_run() {
  local name=$1 url=$2 pid=${4:-$fpid} before after result
  before=$(snapshot "$pid")
  if [ "$3" = /healthz ]; then
    result="$(wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" "$url$3")"
  else
    result=$(cd "$PEER" && STORE_TOKEN=sto wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" -s reserve.wrk.lua "$url$3")
  fi
  after=$(snapshot "$pid")
  python3 - "$name" "$before" "$after" "$result" >> "$out/runs.txt" <<'PY'
import sys, re
name, before, after, result = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), sys.argv[4]
rate = float(re.search(r"Requests/sec:\s+([\d.]+)", result).group(1))
n = int(re.search(r"(\d+) requests in", result).group(1))
bad = re.search(r"non2xx=(\d+)|Non-2xx or 3xx responses: (\d+)", result)
bad = int(next(g for g in bad.groups() if g)) if bad else 0
d = [float(a) - float(b) for a, b in zip(after, before)]
us = lambda x: x * 1e6 / max(1, n)
print(f"{name} rate={rate:.0f} requests={n} non2xx={bad} flashsale_cpu_us={us(d[0]):.1f} "
      f"redis_cpu_us={us(d[1]):.1f} postgres_cpu_us={us(d[2]):.1f} nginx_cpu_us={us(d[3]):.1f} "
      f"redis_cmd_us={d[4] / max(1, n):.2f}")
PY
  tail -1 "$out/runs.txt" >&2
}
: > "$out/runs.txt"
: > "$out/memory.txt"
: > "$out/memory-baseline.txt"
backlog() { curl -fs "$1/metrics" | awk '/^flashsale_persister_backlog_events / { print $2 }'; }
drain() { # waits (at most 5 minutes) until the persister has written every event so far
  for _ in $(seq 600); do [ "$(backlog "$furl")" = "0" ] && return; sleep 0.5; done
}

if [ -n "$BASELINE_BIN" ]; then
  read -r bport bpid < <(bin=$BASELINE_BIN start_flashsale)
  pids+=("$bpid")
  burl="http://127.0.0.1:$bport"
fi
echo "== $ROUNDS rounds, each: success path, sold out, HTTP floor; flashsale and the peer alternate" >&2
for round in $(seq "$ROUNDS"); do
  wrk_run "peer_success" "$purl" /v1/campaigns/big/reservations
  mem_before=$(redis_memory)
  wrk_run "flashsale_success" "$furl" /v1/campaigns/big/reservations
  drain
  # Every reservation of the run is still held (900 s holds): Redis's growth over the run,
  # the persisted stream drained, per reservation made.
  echo "$(( $(redis_memory) - mem_before )) $(tail -1 "$out/runs.txt" | sed -E 's/.* requests=([0-9]+) non2xx=([0-9]+).*/\1 \2/')" >> "$out/memory.txt"
  if [ -n "$BASELINE_BIN" ]; then
    mem_before=$(redis_memory)
    wrk_run "baseline_success" "$burl" /v1/campaigns/big/reservations "$bpid"
    drain
    echo "$(( $(redis_memory) - mem_before )) $(tail -1 "$out/runs.txt" | sed -E 's/.* requests=([0-9]+) non2xx=([0-9]+).*/\1 \2/')" >> "$out/memory-baseline.txt"
  fi
  wrk_run "peer_soldout" "$purl" /v1/campaigns/gone/reservations
  wrk_run "flashsale_soldout" "$furl" /v1/campaigns/gone/reservations
  if [ -n "$BASELINE_BIN" ]; then
    wrk_run "baseline_soldout" "$burl" /v1/campaigns/gone/reservations "$bpid"
    wrk_run "baseline_healthz" "$burl" /healthz "$bpid"
  fi
  wrk_run "flashsale_healthz" "$furl" /healthz
done
[ -n "$BASELINE_BIN" ] && { kill "$bpid"; wait "$bpid" 2>/dev/null || true; }
curl -fs "$furl/metrics" | grep '^flashsale_reserve_batch_size' > "$out/batch-sizes.txt"

echo "== the persister alone: a backlog written by an instance without one, then drained" >&2
kill "$fpid"; wait "$fpid" 2>/dev/null || true
read -r fport fpid < <(start_flashsale FLASHSALE_PERSISTER=false)
pids+=("$fpid"); furl="http://127.0.0.1:$fport"
wrk_run "flashsale_success_no_persister" "$furl" /v1/campaigns/big/reservations
started=$(date +%s.%N)
read -r dport dpid < <(start_flashsale)
pids+=("$dpid")
# The backlog counts stream entries (one per batch of reserves); the events come from the
# persister's own counter.
for _ in $(seq 1200); do [ "$(backlog "http://127.0.0.1:$dport")" = "0" ] && break; sleep 0.1; done
persisted=$(curl -fs "http://127.0.0.1:$dport/metrics" | awk '/^flashsale_persister_events_total / { print $2 }')
persist_rate=$(python3 -c "print(round($persisted / ($(date +%s.%N) - $started)))")
echo "persister drained $persisted events at $persist_rate events/s (start-up included)" >&2
kill "$dpid" "$fpid"; wait "$dpid" "$fpid" 2>/dev/null || true
read -r fport fpid < <(start_flashsale)
pids+=("$fpid"); furl="http://127.0.0.1:$fport"

echo "== the persister's lag during a success burst (sampled every 100 ms)" >&2
(cd "$PEER" && STORE_TOKEN=sto wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" -s reserve.wrk.lua "$furl/v1/campaigns/big/reservations" > "$out/lag-burst.txt") &
wrk_pid=$!
: > "$out/lag.txt"
while kill -0 "$wrk_pid" 2>/dev/null; do
  curl -fs "$furl/metrics" | awk '/^flashsale_persister_lag_seconds / { print $2 }' >> "$out/lag.txt" || true
  sleep 0.1
done
lag_p99=$(python3 -c "
v = sorted(float(x) for x in open('$out/lag.txt') if x.strip())
print(f'{v[min(len(v) - 1, int(len(v) * 0.99))]:.3f}' if v else 'n/a')")
drain

lt() { target/release/loadtest --url "$1" --admin-token adm --store-token sto "${@:2}"; }
echo "== open loop at 40/60/80% of the rate flashsale sustains (success, persister keeping up)" >&2
# Sustained as the open-loop generator itself drives it (it costs more CPU per request than
# wrk, on the same cores): a closed loop of $CONNECTIONS workers with the same generator.
lt "$furl" --json "$out/sustained.json" sale --campaign sustained --stock 1000000000 --limit 1000000 \
  --users 100000000 --attempts 100000 --concurrency "$CONNECTIONS" --hold-seconds 900 --no-verify >&2
drain
sustained=$(python3 -c "import json; print(int(json.load(open('$out/sustained.json'))['report']['attempts_per_second']))")
# The embedded engine (no Redis, SQLite store) at the same rates.
eport=$(free_port)
FLASHSALE_LISTEN=127.0.0.1:$eport FLASHSALE_SQLITE_PATH="$work/embedded.db" FLASHSALE_ADMIN_TOKENS=adm \
  FLASHSALE_STORE_TOKENS=sto FLASHSALE_USER_RATE_PER_SECOND=0 target/release/flashsale > "$out/embedded.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$eport/healthz" && break; sleep 0.1; done
: > "$out/open.txt"
for pct in 40 60 80; do
  rate=$(( sustained * pct / 100 ))
  for engine in redis embedded; do
    url=$furl; [ "$engine" = embedded ] && url="http://127.0.0.1:$eport"
    lt "$url" --json "$out/open-$engine-$pct.json" sale --campaign "open-$engine-$pct" --stock 1000000000 \
      --limit 1000000 --users 100000000 --attempts $(( rate * OPEN_SECONDS )) --rate "$rate" \
      --concurrency 128 --hold-seconds 900 --no-verify >&2
    python3 -c "import json; r=json.load(open('$out/open-$engine-$pct.json'))['report']; print('$engine', $pct, $rate, r['latency']['p50_us'], r['latency']['p99_us'], r['send_lag']['p99_us'])" >> "$out/open.txt"
    [ "$engine" = redis ] && drain
  done
done

echo
python3 - "$out" "$(nproc)" "$CONNECTIONS" "$persist_rate" "$lag_p99" "$sustained" <<'PY'
import re, sys, statistics
out, cores, conns, persist_rate, lag_p99, sustained = sys.argv[1:]
runs = {}
for line in open(f"{out}/runs.txt"):
    name, *pairs = line.split()
    runs.setdefault(name, []).append({k: float(v) for k, v in (p.split("=") for p in pairs)})
def med(name, key):
    return statistics.median(r[key] for r in runs[name])
def ratios(a, b):
    rs = sorted(x["rate"] / y["rate"] for x, y in zip(runs[a], runs[b]))
    return f"{rs[len(rs) // 2]:.2f} (rounds: {', '.join(f'{r:.2f}' for r in rs)})"
fs, peer = "flashsale_success", "peer_success"
print(f"flashsale bench ({cores} cores shared by wrk, service, Redis, Postgres; wrk -c{conns}; medians of rounds)")
print(f"success reserves/s vs the peer        = {ratios(fs, peer)}   ({med(fs,'rate'):.0f}/s vs {med(peer,'rate'):.0f}/s; target >= 1.5)")
print(f"sold-out refusals/s vs the peer       = {ratios('flashsale_soldout', 'peer_soldout')}   ({med('flashsale_soldout','rate'):.0f}/s vs {med('peer_soldout','rate'):.0f}/s; target >= 2.5)")
print(f"flashsale HTTP floor (GET /healthz)   = {med('flashsale_healthz','rate'):.0f}/s = {med('flashsale_healthz','rate') / med('peer_soldout','rate'):.2f}x the peer's sold-out rate (the most any refusal path here can reach)")
print(f"Redis per reservation, commandstats   = {med(fs,'redis_cmd_us'):.2f} us flashsale (persister included) vs {med(peer,'redis_cmd_us'):.2f} us peer   (target <= 6)")
print(f"Redis CPU per reservation (INFO-free) = {med(fs,'redis_cpu_us'):.1f} us flashsale vs {med(peer,'redis_cpu_us'):.1f} us peer   (/proc CPU time of redis-server)")
print(f"machine CPU per success request       = flashsale {med(fs,'flashsale_cpu_us'):.1f} + Redis {med(fs,'redis_cpu_us'):.1f} + Postgres {med(fs,'postgres_cpu_us'):.1f} us;  peer: nginx {med(peer,'nginx_cpu_us'):.1f} + Redis {med(peer,'redis_cpu_us'):.1f} us")
if "baseline_success" in runs:
    for what in ("success", "soldout", "healthz"):
        a, b = f"flashsale_{what}", f"baseline_{what}"
        print(f"{what:8} vs the baseline build         = {ratios(a, b)}   (service CPU per request {med(a,'flashsale_cpu_us'):.1f} vs {med(b,'flashsale_cpu_us'):.1f} us; Redis {med(a,'redis_cpu_us'):.1f} vs {med(b,'redis_cpu_us'):.1f} us)")
def per_hold(name):
    return sorted(int(grow) / max(1, int(n) - int(bad)) for grow, n, bad in (l.split() for l in open(f"{out}/{name}")))
held, base = per_hold("memory.txt"), per_hold("memory-baseline.txt")
if held:
    print(f"Redis memory per live hold            = {held[len(held) // 2]:.0f} B   (used_memory growth over a success run, stream drained; rounds: {', '.join(f'{h:.0f}' for h in held)}; target <= 200)")
if base:
    print(f"Redis memory per live hold, baseline  = {base[len(base) // 2]:.0f} B   (rounds: {', '.join(f'{h:.0f}' for h in base)})")
nop = runs["flashsale_success_no_persister"][0]
print(f"success without a persister           = {nop['rate']:.0f}/s (flashsale {nop['flashsale_cpu_us']:.1f} + Redis {nop['redis_cpu_us']:.1f} us per request): what the durable path costs on shared cores")
print(f"persister alone vs success rate       = {float(persist_rate) / med(fs,'rate'):.2f}   ({persist_rate} events/s to Postgres from a full stream; target >= 2)")
print(f"persister lag p99 during a burst      = {lag_p99} s   (target < 1)")
for line in open(f"{out}/open.txt"):
    engine, pct, rate, p50, p99, lag = line.split()
    print(f"open loop {engine:8} at {pct}% ({rate}/s of {sustained}/s) = p50 {int(p50)/1000:.2f} ms, p99 {int(p99)/1000:.2f} ms   (generator send lag p99 {int(lag)/1000:.2f} ms; target p99 <= 5 at 80%)")
buckets = [(l.split('le="')[1].split('"')[0], float(l.split()[-1])) for l in open(f"{out}/batch-sizes.txt") if "_bucket" in l]
count = dict((k, v) for k, v in buckets).get("+Inf", 0)
prev, dist = 0.0, []
for le, c in buckets:
    dist.append(f"<={le}: {100 * (c - prev) / max(1, count):.0f}%"); prev = c
sums = [float(l.split()[-1]) for l in open(f"{out}/batch-sizes.txt") if l.startswith("flashsale_reserve_batch_size_sum")]
print(f"reserve batch sizes                   = mean {sums[0] / max(1, count):.1f}; " + ", ".join(dist))
print(f"runs: {out}/runs.txt")
PY
