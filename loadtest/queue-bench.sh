#!/usr/bin/env bash
# The waiting-room benchmark, in ONE run on this machine, for both engines: ticket polls
# (`GET /v1/queue/{ticket}`) against `GET /healthz` under the same closed loop (target: polls
# >= 0.5x healthz), then a burst of joins sent open loop at JOIN_RATE (target: 100k joins in
# the first second answered without a 5xx), then every joined user through the line (poll
# with backoff, reserve with the pass) and the sale's invariants. The generator, the service,
# Redis and Postgres share the same cores; only figures of the same run are compared.
#   loadtest/queue-bench.sh
#   ROUNDS=1 JOINS=20000 JOIN_RATE=20000 loadtest/queue-bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
POLLS=${POLLS:-100000}
CONNECTIONS=${CONNECTIONS:-64}
JOINS=${JOINS:-100000}
JOIN_RATE=${JOIN_RATE:-100000}
STOCK=${STOCK:-2000}
out=${OUT:-target/queue-bench}
mkdir -p "$out"
out=$(cd "$out" && pwd)

scripts/ensure-services >&2
cargo build --release --locked --quiet -p flashsale -p loadtest

work=$(mktemp -d)
pids=()
schema="qbench$(date +%s)"
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -n "${rport:-}" ] && redis-cli -p "$rport" shutdown nosave >/dev/null 2>&1 || true
  wait 2>/dev/null || true
  psql -h 127.0.0.1 -U postgres -d test -qc "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 100); do curl -fs -o /dev/null "$1/healthz" && return 0; sleep 0.1; done; return 1; }

# A private Redis (no persistence, like the machine's) and a fresh Postgres schema.
rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" --daemonize yes \
  --logfile "$work/redis.log" --pidfile "$work/redis.pid"
for _ in $(seq 50); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
psql -h 127.0.0.1 -U postgres -d test -qc "CREATE SCHEMA $schema"

# CPU seconds (user + system) a process spent so far; Redis's own time in commands (µs).
cpu_of_pid() { awk '{ sub(/^[^)]*\) /, ""); print ($12 + $13) / 100 }' "/proc/$1/stat"; }
redis_usec() { redis-cli -p "$rport" INFO commandstats | tr -d '\r' | awk -F'[:=,]' '/^cmdstat_/ { u += $5 } END { printf "%d\n", u }'; }
redis_pid=$(cat "$work/redis.pid")

common=(FLASHSALE_ADMIN_TOKENS=adm FLASHSALE_STORE_TOKENS=sto FLASHSALE_USER_RATE_PER_SECOND=0)
rport_app=$(free_port)
env "${common[@]}" FLASHSALE_LISTEN=127.0.0.1:$rport_app FLASHSALE_REDIS_URL="redis://127.0.0.1:$rport" \
  FLASHSALE_DATABASE_URL="postgres://postgres@127.0.0.1:5432/test?options=-csearch_path%3D$schema" \
  target/release/flashsale > "$out/flashsale-redis.log" 2>&1 &
pids+=($!)
redis_app_pid=$!
eport_app=$(free_port)
env "${common[@]}" FLASHSALE_LISTEN=127.0.0.1:$eport_app FLASHSALE_SQLITE_PATH="$work/embedded.db" \
  target/release/flashsale > "$out/flashsale-embedded.log" 2>&1 &
pids+=($!)
embedded_app_pid=$!
wait_http "http://127.0.0.1:$rport_app"
wait_http "http://127.0.0.1:$eport_app"

lt() { target/release/loadtest --url "$1" --admin-token adm --store-token sto "${@:2}"; }
rate_of() { python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(r.get('report', r)['attempts_per_second'])" "$1"; }
: > "$out/polls.txt"
for engine in redis embedded; do
  url="http://127.0.0.1:$rport_app"; app_pid=$redis_app_pid
  [ "$engine" = embedded ] && url="http://127.0.0.1:$eport_app" && app_pid=$embedded_app_pid
  for round in $(seq "$ROUNDS"); do
    echo "== $engine round $round: healthz, then polls" >&2
    lt "$url" --json "$out/healthz-$engine-$round.json" healthz --attempts "$POLLS" --concurrency "$CONNECTIONS" >&2
    # The tickets are taken first (queue-poll's own joins), then the polls are measured:
    # CPU is read around the whole command, joins included (1,000 of them, ~1 %).
    before="$(cpu_of_pid "$app_pid") $(cpu_of_pid "$redis_pid") $(redis_usec)"
    lt "$url" --json "$out/poll-$engine-$round.json" queue-poll --campaign "poll-$round" --users 1000 \
      --attempts "$POLLS" --concurrency "$CONNECTIONS" >&2
    after="$(cpu_of_pid "$app_pid") $(cpu_of_pid "$redis_pid") $(redis_usec)"
    echo "$engine $(rate_of "$out/healthz-$engine-$round.json") $(rate_of "$out/poll-$engine-$round.json") $before $after" >> "$out/polls.txt"
  done
  echo "== $engine: $JOINS joins at $JOIN_RATE/s, then everyone through the line" >&2
  before="$(cpu_of_pid "$app_pid") $(cpu_of_pid "$redis_pid") $(redis_usec)"
  lt "$url" --json "$out/line-$engine.json" sale --scenario queue --campaign "line" --stock "$STOCK" \
    --users "$JOINS" --attempts "$JOINS" --rate "$JOIN_RATE" --concurrency 512 \
    --admit-per-second 1000 --starts-in 10 --hold-seconds 900 >&2
  echo "$engine $before $(cpu_of_pid "$app_pid") $(cpu_of_pid "$redis_pid") $(redis_usec)" >> "$out/line-cpu.txt"
done

python3 - "$out" "$(nproc)" "$POLLS" "$JOINS" <<'PY'
import json, statistics, sys
out, cores = sys.argv[1:3]
rows = [l.split() for l in open(f"{out}/polls.txt")]
print(f"waiting-room bench ({cores} cores shared by the generator, the service, Redis and Postgres)")
polls = int(sys.argv[3])
for engine in ("redis", "embedded"):
    mine = [(float(r[1]), float(r[2])) for r in rows if r[0] == engine]
    ratios = sorted(p / h for h, p in mine)
    print(f"{engine:8} polls vs healthz = {statistics.median(ratios):.2f} (rounds: {', '.join(f'{r:.2f}' for r in ratios)}; "
          f"{statistics.median(p for _, p in mine):.0f}/s vs {statistics.median(h for h, _ in mine):.0f}/s; target >= 0.5)")
    cpu = [[float(x) for x in r[3:9]] for r in rows if r[0] == engine]
    service = statistics.median((c[3] - c[0]) * 1e6 / polls for c in cpu)
    redis_cpu = statistics.median((c[4] - c[1]) * 1e6 / polls for c in cpu)
    redis_cmd = statistics.median((c[5] - c[2]) / polls for c in cpu)
    print(f"{engine:8} per poll: service {service:.1f} us CPU, redis-server {redis_cpu:.1f} us CPU ({redis_cmd:.2f} us in commands)")
for engine in ("redis", "embedded"):
    run = json.load(open(f"{out}/line-{engine}.json"))
    r, line = run["report"], run["line"]
    first = r["series"][0] if r["series"] else {"attempts": 0, "errors": 0}
    print(f"{engine:8} joins: {int(r['burst']['attempts'])} sent at {r['burst']['drive'].get('rate_per_second')}/s, answered at "
          f"{r['attempts_per_second']:.0f}/s, 5xx or no answer {r['error_ratio']:.4f}, p99 {r['latency']['p99_us'] / 1000:.0f} ms "
          f"(from the scheduled send); first second: {first['attempts']} sent, {first['errors']} errors")
    cpu = next([float(x) for x in l.split()[1:]] for l in open(f"{out}/line-cpu.txt") if l.startswith(engine))
    requests = int(sys.argv[4]) + line["polls"] + line["outcomes"].get("reserved", 0)
    print(f"{engine:8} joins + line: service {(cpu[3] - cpu[0]) * 1e6 / requests:.1f} us CPU, redis-server "
          f"{(cpu[4] - cpu[1]) * 1e6 / requests:.1f} us CPU, {(cpu[5] - cpu[2]) / requests:.2f} us in commands, per request ({requests} requests)")
    print(f"{engine:8} line:  {line['users']} users, {line['polls']} polls ({line['polls'] / max(1, line['users']):.1f} per user), "
          f"outcomes {line['outcomes']}, errors {line['errors']}, last reservation at {line['last_reserved_at']:.1f} s")
PY
