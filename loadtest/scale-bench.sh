#!/usr/bin/env bash
# The catalogue benchmark: one hot sale beside idle catalogues of growing size, in ONE run,
# on both engines (Redis + Postgres, and the embedded engine + SQLite). For each catalogue
# size (cumulative: the idle campaigns of one size stay for the next):
#   - idle CPU of the service and of Redis over IDLE_SECONDS, once every lease has ended;
#   - Redis memory per idle campaign (used_memory before and after creating them);
#   - the sale's rate (wrk, the peer's reserve.wrk.lua, CONNECTIONS workers, SALE_SECONDS;
#     the median of SALES sales) relative to the empty catalogue's in this run, and the CPU
#     the service, Redis and Postgres spent per request during it;
#   - the persister's lag p99 during the sale (flashsale_persister_lag_seconds every 100 ms)
#     and the time after the sale until the database holds every acknowledged reservation;
#   - expiry lateness p99: the sale's holds last 2 s; each expired reservation's expiry event
#     against its expires_at, read from the database;
#   - /metrics size; the status-filtered list's latency (median of 5);
# and at the end the webhook delivery rate to a local receiver that answers at once (nginx
# `return 204`), replaying the first sale's events, one event per delivery and 100.
#
#   loadtest/scale-bench.sh                                  # 0 1000 10000 100000, both engines
#   SIZES="0 1000" ENGINES=redis loadtest/scale-bench.sh     # quicker
#
# Needs (Debian packages, installed when missing): wrk nginx-light redis-server redis-tools
# postgresql-client.
set -euo pipefail
cd "$(dirname "$0")/.."
here=$(pwd)

SIZES=${SIZES:-"0 1000 10000 100000"}
ENGINES=${ENGINES:-"redis embedded"}
CONNECTIONS=${CONNECTIONS:-8}
SALE_SECONDS=${SALE_SECONDS:-6}
SALES=${SALES:-3}   # sales per catalogue size; the rate reported is their median
IDLE_SECONDS=${IDLE_SECONDS:-10}
PEER=${PEER:-$here/../shared/peer}
out=${OUT:-target/scale-bench}
mkdir -p "$out"
out=$(cd "$out" && pwd)

scripts/ensure-services >&2
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx-light)
if [ ${#need[@]} -gt 0 ]; then
  echo "scale-bench.sh: installing ${need[*]}" >&2
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
  service nginx stop >/dev/null 2>&1 || true
fi
cargo build --release --locked --quiet -p flashsale

work=$(mktemp -d)
pids=()
schema="scale$(date +%s)"
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
cpu_of_pid() { awk '{ sub(/^[^)]*\) /, ""); print ($12 + $13) / 100 }' "/proc/$1/stat"; }
cpu_of_name() { # every process named $1 (Postgres: its backends too), in one pass
  for p in $(pgrep -x "$1" || true); do cat "/proc/$p/stat" 2>/dev/null; done \
    | awk '{ sub(/^[^)]*\) /, ""); s += $12 + $13 } END { print s / 100 }'
}

# The webhook receiver: nginx answering 204 to everything, keep-alive.
nport=$(free_port)
mkdir -p "$work/ng"
cat > "$work/ng/nginx.conf" <<EOF
worker_processes 1;
pid $work/ng/nginx.pid;
error_log $work/ng/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/ng;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$nport; location / { return 204; } }
}
EOF
nginx -c "$work/ng/nginx.conf"

: > "$out/rows.txt"
for engine in $ENGINES; do
  echo "== $engine" >&2
  port=$(free_port)
  env_common=(FLASHSALE_LISTEN=127.0.0.1:$port FLASHSALE_ADMIN_TOKENS=adm FLASHSALE_STORE_TOKENS=sto
    FLASHSALE_USER_RATE_PER_SECOND=0 FLASHSALE_WEBHOOK_ALLOWED_HOSTS=127.0.0.1
    FLASHSALE_LOG=warn)
  redis_pid=""
  if [ "$engine" = redis ]; then
    rport=$(free_port)
    redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" --daemonize yes \
      --logfile "$work/redis.log" --pidfile "$work/redis.pid"
    for _ in $(seq 50); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
    redis_pid=$(cat "$work/redis.pid")
    psql -h 127.0.0.1 -U postgres -d test -qc "CREATE SCHEMA $schema"
    env "${env_common[@]}" FLASHSALE_REDIS_URL="redis://127.0.0.1:$rport" \
      FLASHSALE_DATABASE_URL="postgres://postgres@127.0.0.1:5432/test?options=-csearch_path%3D$schema" \
      target/release/flashsale >> "$out/flashsale-$engine.log" 2>&1 &
  else
    env "${env_common[@]}" FLASHSALE_SQLITE_PATH="$work/embedded.db" \
      target/release/flashsale >> "$out/flashsale-$engine.log" 2>&1 &
  fi
  fpid=$!
  pids+=("$fpid")
  url="http://127.0.0.1:$port"
  for _ in $(seq 100); do curl -fs -o /dev/null "$url/healthz" && break; sleep 0.1; done
  sql() { # one number from the database
    if [ "$engine" = redis ]; then
      psql -h 127.0.0.1 -U postgres -d test -Atqc "SET search_path TO $schema; $1" | tail -1
    else
      python3 -c "import sqlite3,sys; print(sqlite3.connect('$work/embedded.db').execute(sys.argv[1]).fetchone()[0] or 0)" "$1"
    fi
  }
  redis_memory() { [ -n "$redis_pid" ] && redis-cli -p "$rport" INFO memory | tr -d '\r' | awk -F: '/^used_memory:/ {print $2}' || echo 0; }
  backlog() { curl -fs "$url/metrics" | awk '/^flashsale_persister_backlog_events / { print $2 }'; }
  created=0
  step=0
  first_hot=""
  for size in $SIZES; do
    step=$(( step + 1 ))
    memory_before=$(redis_memory)
    if [ "$size" -gt "$created" ]; then
      python3 loadtest/create-campaigns.py "$url" adm idle "$created" $(( size - created )) 16 \
        > "$out/create-$engine-$size.txt"
    fi
    memory_per=$(python3 -c "print(round(($(redis_memory) - $memory_before) / max(1, $size - $created)))")
    created=$size
    # Every lease ends (10 s) and the campaigns retire; then nothing should run.
    sleep 15
    for _ in $(seq 600); do [ "$(backlog)" = "0" ] && break; sleep 0.5; done
    c0=$(cpu_of_pid "$fpid"); r0=$([ -n "$redis_pid" ] && cpu_of_pid "$redis_pid" || echo 0)
    p0=$(cpu_of_name postgres)
    sleep "$IDLE_SECONDS"
    idle_service=$(python3 -c "print(round(($(cpu_of_pid "$fpid") - $c0) * 100 / $IDLE_SECONDS, 1))")
    idle_redis=$(python3 -c "print(round(($([ -n "$redis_pid" ] && cpu_of_pid "$redis_pid" || echo 0) - $r0) * 100 / $IDLE_SECONDS, 1))")
    idle_postgres=$(python3 -c "print(round(($(cpu_of_name postgres) - $p0) * 100 / $IDLE_SECONDS, 1))")
    # SALES - 1 sales for the rate alone (each on a campaign of its own), then the measured
    # one, with the persister's lag sampled: the rate is the median of all.
    rates=()
    for k in $(seq 2 "$SALES"); do
      extra="hot-$step-$size-$k"
      curl -fs -o /dev/null -X POST "$url/v1/campaigns" -H 'authorization: Bearer adm' -H 'content-type: application/json' \
        -H "idempotency-key: $extra" -d "{\"id\":\"$extra\",\"kind\":\"flash_sale\",\"sku\":\"hot\",\"stock\":1000000000,\"per_user_limit\":1000000,\"hold_seconds\":2}"
      rates+=("$(cd "$PEER" && STORE_TOKEN=sto wrk -t1 -c"$CONNECTIONS" -d"${SALE_SECONDS}s" -s reserve.wrk.lua \
        "$url/v1/campaigns/$extra/reservations" | awk '/Requests\/sec/ { print $2 }')")
      for _ in $(seq 600); do [ "$(backlog)" = "0" ] && break; sleep 0.5; done
    done
    hot="hot-$step-$size"
    first_hot=${first_hot:-$hot}
    curl -fs -o /dev/null -X POST "$url/v1/campaigns" -H 'authorization: Bearer adm' -H 'content-type: application/json' \
      -H "idempotency-key: $hot" -d "{\"id\":\"$hot\",\"kind\":\"flash_sale\",\"sku\":\"hot\",\"stock\":1000000000,\"per_user_limit\":1000000,\"hold_seconds\":2}"
    s0=$(cpu_of_pid "$fpid"); sr0=$([ -n "$redis_pid" ] && cpu_of_pid "$redis_pid" || echo 0); sp0=$(cpu_of_name postgres)
    (cd "$PEER" && STORE_TOKEN=sto wrk -t1 -c"$CONNECTIONS" -d"${SALE_SECONDS}s" -s reserve.wrk.lua \
      "$url/v1/campaigns/$hot/reservations" > "$out/sale-$engine-$size.txt") &
    wrk_pid=$!
    : > "$out/lag-$engine-$size.txt"
    while kill -0 "$wrk_pid" 2>/dev/null; do
      curl -fs "$url/metrics" | awk '/^flashsale_persister_lag_seconds / { print $2 }' >> "$out/lag-$engine-$size.txt" || true
      sleep 0.1
    done
    wait "$wrk_pid" || true
    sale_end=$(date +%s.%N)
    s1=$(cpu_of_pid "$fpid"); sr1=$([ -n "$redis_pid" ] && cpu_of_pid "$redis_pid" || echo 0); sp1=$(cpu_of_name postgres)
    # CPU per request of each process during the measured sale (what a slower sale paid for).
    per_request=$(python3 -c "
import re
n = int(re.search(r'(\d+) requests in', open('$out/sale-$engine-$size.txt').read()).group(1))
print(f'cpu_us_service={($s1 - $s0) * 1e6 / n:.1f} cpu_us_redis={($sr1 - $sr0) * 1e6 / n:.1f} cpu_us_postgres={($sp1 - $sp0) * 1e6 / n:.1f}')")
    sold=$(python3 -c "import re; t=open('$out/sale-$engine-$size.txt').read(); n=int(re.search(r'(\d+) requests in', t).group(1)); b=re.search(r'non2xx=(\d+)', t); print(n - (int(b.group(1)) if b else 0))")
    rates+=("$(awk '/Requests\/sec/ { print $2 }' "$out/sale-$engine-$size.txt")")
    rate=$(printf '%s\n' "${rates[@]}" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
    for _ in $(seq 1200); do
      [ "$(sql "SELECT COUNT(*) FROM reservations WHERE campaign_id = '$hot'")" -ge "$sold" ] && break
      sleep 0.05
    done
    in_db_after=$(python3 -c "print(round($(date +%s.%N) - $sale_end, 2))")
    # Every hold (2 s) has ended and been persisted.
    sleep 4
    for _ in $(seq 600); do [ "$(backlog)" = "0" ] && break; sleep 0.5; done
    lateness=$(sql "SELECT MAX(event_ms - expires_at_ms) FROM (SELECT event_ms, expires_at_ms FROM reservations \
      WHERE campaign_id = '$hot' AND status = 'expired' ORDER BY event_ms - expires_at_ms \
      LIMIT (SELECT CAST(COUNT(*) * 0.99 AS INTEGER) + 1 FROM reservations WHERE campaign_id = '$hot' AND status = 'expired')) AS t")
    metrics_bytes=$(curl -fs "$url/metrics" | wc -c)
    list_ms=$(for _ in 1 2 3 4 5; do
      curl -fs -o /dev/null -w '%{time_total}\n' -H 'authorization: Bearer adm' "$url/v1/campaigns?status=sold_out&limit=1"
    done | sort -n | sed -n 3p)
    lag_p99=$(python3 -c "
v = sorted(float(x) for x in open('$out/lag-$engine-$size.txt') if x.strip())
print(f'{v[min(len(v) - 1, int(len(v) * 0.99))]:.3f}' if v else 'n/a')")
    echo "$engine $size idle_service=$idle_service idle_redis=$idle_redis idle_postgres=$idle_postgres rate=$rate lag_p99=$lag_p99 in_db_after=$in_db_after expiry_late_p99_ms=$lateness redis_bytes_per_idle=$memory_per $per_request metrics_bytes=$metrics_bytes list_sold_out_ms=$(python3 -c "print(round($list_ms * 1000, 1))")" | tee -a "$out/rows.txt" >&2
  done
  # Webhook delivery rate: the first sale's events replayed to the receiver.
  for batch in 1 100; do
    id=$(curl -fs -X POST "$url/v1/webhooks" -H 'authorization: Bearer adm' -H 'content-type: application/json' \
      -H "idempotency-key: wh-$engine-$batch" \
      -d "{\"url\":\"http://127.0.0.1:$nport/hook\",\"campaign_id\":\"$first_hot\",\"max_batch\":$batch}" \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    cursor() { curl -fs -H 'authorization: Bearer adm' "$url/v1/webhooks/$id" | python3 -c 'import json,sys; print(json.load(sys.stdin)["delivered_cursor"])'; }
    last=$(sql "SELECT MAX(cursor) FROM events WHERE campaign_id = '$first_hot'")
    n=$(sql "SELECT COUNT(*) FROM events WHERE campaign_id = '$first_hot'")
    # Every event of the first sale, replayed: timed from the replay to the last one's 2xx.
    t0=$(date +%s.%N)
    curl -fs -o /dev/null -X POST "$url/v1/webhooks/$id/replay" -H 'authorization: Bearer adm' \
      -H 'content-type: application/json' -H "idempotency-key: replay-$id" -d '{"after":0}'
    for _ in $(seq 1200); do [ "$(cursor)" -ge "$last" ] && break; sleep 0.05; done
    t1=$(date +%s.%N)
    echo "$engine webhook max_batch=$batch events=$n events_per_second=$(python3 -c "print(round($n / ($t1 - $t0)))")" | tee -a "$out/rows.txt" >&2
    curl -fs -o /dev/null -X DELETE "$url/v1/webhooks/$id" -H 'authorization: Bearer adm'
  done
  kill "$fpid"; wait "$fpid" 2>/dev/null || true
  if [ -n "$redis_pid" ]; then redis-cli -p "$rport" shutdown nosave >/dev/null 2>&1 || true; rport=""; fi
done

echo
python3 - "$out/rows.txt" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
base = {}
print("engine     idle  | svc CPU % | Redis CPU % | PG CPU % | sale rate | lag p99 s | in DB after s | expiry late p99 ms | Redis B/idle | /metrics B | list ms")
for r in rows:
    if r[1] == "webhook":
        continue
    f = dict(p.split("=") for p in r[2:])
    base.setdefault(r[0], float(f["rate"]))
    print(f"{r[0]:9} {int(r[1]):7} | {f['idle_service']:>9} | {f['idle_redis']:>11} | {f.get('idle_postgres', '-'):>8} | {float(f['rate']) / base[r[0]]:8.2f}x | {f['lag_p99']:>9} | {f['in_db_after']:>13} | {f['expiry_late_p99_ms']:>18} | {f['redis_bytes_per_idle']:>12} | {f['metrics_bytes']:>10} | {f['list_sold_out_ms']:>7}")
for r in rows:
    if r[1] == "webhook":
        print(" ".join(r))
PY
