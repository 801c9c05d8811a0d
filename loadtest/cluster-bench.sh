#!/usr/bin/env bash
# Redis CPU per reservation, per node, on a 3-master Redis Cluster — and on one Redis in the
# same run, as the baseline. In ONE run, on this machine: a private 3-master cluster and a
# private single Redis, a flashsale instance on each (Postgres store, persister on), driven
# by the OpenResty peer's wrk line (../shared/peer/reserve.wrk.lua: a new key per request):
#
#   single_hot     one campaign on the single Redis
#   cluster_hot    one campaign on the cluster: one node decides every reservation
#   cluster_spread three campaigns, one per node, driven at once (a third of the
#                  connections each): each node decides a third
#   cluster_shards one campaign with "shards": 3, a shard on each node: each node decides
#                  the attempts of a third of the users
#   single_shards  the same campaign on the single Redis (three slots of one server)
#   sellout        a sharded campaign (3 shards, one per node) of 30,000 units sold out:
#                  the transfers its shards needed at the end of the sale, and their cost
#
# For every run: the rate, and per request the service's CPU, each Redis node's CPU and its
# command time (INFO commandstats: scripts' inner calls counted once). Everything shares the
# same two cores, so the rate says little across machines; the per-node costs are what the
# docs/scaling-out.md turns into what n nodes can carry.
#
#   loadtest/cluster-bench.sh
#   ROUNDS=1 SECONDS_PER_RUN=4 loadtest/cluster-bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-6}
CONNECTIONS=${CONNECTIONS:-63}
PEER=${PEER:-$(pwd)/../shared/peer}
out=${OUT:-target/bench}
mkdir -p "$out"
out=$(cd "$out" && pwd)

scripts/ensure-services >&2
if ! command -v wrk >/dev/null; then
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >&2
fi
cargo build --release --locked --quiet -p flashsale

work=$(mktemp -d)
pids=()
redis_ports=()
schema="cbench$(date +%s)"
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for port in "${redis_ports[@]}"; do redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; done
  wait 2>/dev/null || true
  for name in "${schema}_c" "${schema}_s"; do
    psql -h 127.0.0.1 -U postgres -d test -qc "DROP SCHEMA IF EXISTS $name CASCADE" >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_redis() { # port, extra args...
  local port=$1; shift
  mkdir -p "$work/$port"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work/$port" \
    --daemonize yes --logfile "$work/$port/redis.log" --pidfile "$work/$port/redis.pid" "$@"
  redis_ports+=("$port")
  for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
}
nodes=()
for _ in 1 2 3; do
  port=$(free_port)
  start_redis "$port" --cluster-enabled yes --cluster-config-file nodes.conf
  nodes+=("$port")
done
redis-cli --cluster create $(printf '127.0.0.1:%s ' "${nodes[@]}") --cluster-replicas 0 --cluster-yes >/dev/null
for port in "${nodes[@]}"; do
  for _ in $(seq 100); do redis-cli -p "$port" cluster info | grep -q cluster_state:ok && break; sleep 0.1; done
done
single=$(free_port)
start_redis "$single"

# Each instance its own schema: the same campaign ids on both.
start_flashsale() { # namespace, extra env assignments...
  local port namespace=$1; shift
  port=$(free_port)
  psql -h 127.0.0.1 -U postgres -d test -qc "CREATE SCHEMA ${schema}_$namespace"
  env FLASHSALE_LISTEN=127.0.0.1:$port FLASHSALE_REDIS_NAMESPACE="$namespace" \
    FLASHSALE_DATABASE_URL="postgres://postgres@127.0.0.1:5432/test?options=-csearch_path%3D${schema}_$namespace" \
    FLASHSALE_ADMIN_TOKENS=adm FLASHSALE_STORE_TOKENS=sto \
    FLASHSALE_USER_RATE_PER_SECOND=0 "$@" target/release/flashsale >> "$out/flashsale-$port.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$port/healthz" && break; sleep 0.1; done
  echo "$port $!"
}
cluster_urls=$(printf 'redis://127.0.0.1:%s,' "${nodes[@]}")
read -r cport cpid < <(start_flashsale c FLASHSALE_REDIS_CLUSTER_NODES="${cluster_urls%,}")
read -r sport spid < <(start_flashsale s FLASHSALE_REDIS_URL="redis://127.0.0.1:$single")
pids+=("$cpid" "$spid")
campaign() { # service port, id[, shards[, stock]]
  curl -fs -o /dev/null -X POST "http://127.0.0.1:$1/v1/campaigns" -H 'authorization: Bearer adm' \
    -H 'content-type: application/json' -H "idempotency-key: $2" \
    -d "{\"id\":\"$2\",\"kind\":\"flash_sale\",\"sku\":\"bench\",\"stock\":${4:-1000000000},\"per_user_limit\":1000000,\"hold_seconds\":900,\"shards\":${3:-1}}"
}
# The node (index) that holds a campaign of the cluster instance.
owner() {
  local i
  for i in 0 1 2; do
    [ "$(redis-cli -p "${nodes[$i]}" exists "c:v3:{c:$1}" 2>/dev/null)" = 1 ] && { echo "$i"; return; }
  done
  echo none
}
campaign "$sport" hot
campaign "$cport" hot
hot_node=$(owner hot)
spread=("" "" "")
n=0
while [ -z "${spread[0]}" ] || [ -z "${spread[1]}" ] || [ -z "${spread[2]}" ]; do
  n=$((n + 1)); campaign "$cport" "n$n"
  i=$(owner "n$n"); [ -z "${spread[$i]}" ] && spread[$i]="n$n"
done
# Sharded campaigns whose three shards sit on three nodes.
three_nodes() { # id stock
  local n=0 id
  while :; do
    n=$((n + 1)); id="$1$n"; campaign "$cport" "$id" 3 "$2"
    [ "$(for s in "$id" "$id.1" "$id.2"; do owner "$s"; done | sort -u | wc -l)" = 3 ] && { echo "$id"; return; }
  done
}
sharded=$(three_nodes sh 1000000000)
campaign "$sport" "$sharded" 3
echo "cluster: nodes ${nodes[*]}; 'hot' on node $hot_node; spread over ${spread[*]}; '$sharded' a shard per node" >&2

cpu_of_pid() { awk '{ sub(/^[^)]*\) /, ""); print ($12 + $13) / 100 }' "/proc/$1/stat"; }
redis_usec() { redis-cli -p "$1" INFO commandstats | tr -d '\r' | awk -F'[:=,]' '/^cmdstat_/ { u += $5 } END { printf "%d\n", u }'; }
# "service_cpu single_cpu single_us node0_cpu node0_us node1_cpu node1_us node2_cpu node2_us"
snapshot() {
  local line="$(cpu_of_pid "$1") $(cpu_of_pid "$(cat "$work/$single/redis.pid")") $(redis_usec "$single")" port
  for port in "${nodes[@]}"; do
    line="$line $(cpu_of_pid "$(cat "$work/$port/redis.pid")") $(redis_usec "$port")"
  done
  echo "$line"
}
drive() { # url path connections
  (cd "$PEER" && STORE_TOKEN=sto wrk -t1 -c"$3" -d"${SECONDS_PER_RUN}s" -s reserve.wrk.lua "$1$2")
}
# run NAME SERVICE_PID URL CAMPAIGN...: wrk on every campaign at once (the connections
# shared out); appends one line to runs.
run() {
  local name=$1 service=$2 url=$3 before after results=() c per
  shift 3
  per=$(( CONNECTIONS / $# ))
  before=$(snapshot "$service")
  local files=()
  for c in "$@"; do
    drive "$url" "/v1/campaigns/$c/reservations" "$per" > "$work/wrk-$c.txt" &
    files+=("$work/wrk-$c.txt")
  done
  wait
  after=$(snapshot "$service")
  python3 - "$name" "$before" "$after" "${files[@]}" >> "$out/cluster-runs.txt" <<'PY'
import sys, re
name, before, after, files = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), sys.argv[4:]
rate = n = bad = 0
for f in files:
    text = open(f).read()
    rate += float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    n += int(re.search(r"(\d+) requests in", text).group(1))
    m = re.search(r"non2xx=(\d+)", text)
    bad += int(m.group(1)) if m else 0
d = [float(a) - float(b) for a, b in zip(after, before)]
cpu = lambda x: x * 1e6 / max(1, n)
us = lambda x: x / max(1, n)
nodes = " ".join(f"node{i}_cpu_us={cpu(d[3 + 2 * i]):.1f} node{i}_cmd_us={us(d[4 + 2 * i]):.2f}" for i in range(3))
print(f"{name} rate={rate:.0f} requests={n} non2xx={bad} flashsale_cpu_us={cpu(d[0]):.1f} "
      f"single_cpu_us={cpu(d[1]):.1f} single_cmd_us={us(d[2]):.2f} {nodes}")
PY
  tail -1 "$out/cluster-runs.txt" >&2
}
: > "$out/cluster-runs.txt"
for round in $(seq "$ROUNDS"); do
  echo "== round $round" >&2
  run single_hot "$spid" "http://127.0.0.1:$sport" hot
  run cluster_hot "$cpid" "http://127.0.0.1:$cport" hot
  run cluster_spread "$cpid" "http://127.0.0.1:$cport" "${spread[@]}"
  run cluster_shards "$cpid" "http://127.0.0.1:$cport" "$sharded"
  run single_shards "$spid" "http://127.0.0.1:$sport" "$sharded"
done
echo "== medians over $ROUNDS rounds (per request; node $hot_node holds 'hot')" >&2
python3 - "$out/cluster-runs.txt" <<'PY'
import sys, statistics, collections
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    name, *fields = line.split()
    runs[name].append({k: float(v) for k, v in (f.split("=") for f in fields)})
for name, rs in runs.items():
    keys = rs[0].keys()
    print(name, " ".join(f"{k}={statistics.median(r[k] for r in rs):g}" for k in keys))
PY

# The end of a sale: 30,000 units over three shards (one per node), the wrk line until well
# past the sell-out. Transfers start when a shard runs dry while another has units.
scripts_now() {
  curl -fs "http://127.0.0.1:$cport/metrics" | tr -d '\r' | awk '
    /^flashsale_redis_script_duration_seconds_(sum|count)\{/ { print }
    /^flashsale_shard_trans/ { print }'
}
echo "== sellout: 30,000 units, 3 shards (one per node)" >&2
sellout=$(three_nodes so 30000)
scripts_now > "$work/before.txt"
run sellout "$cpid" "http://127.0.0.1:$cport" "$sellout"
scripts_now > "$work/after.txt"
curl -fs "http://127.0.0.1:$cport/v1/campaigns/$sellout" -H 'authorization: Bearer adm' > "$work/sellout.json"
python3 - "$work/before.txt" "$work/after.txt" "$work/sellout.json" <<'PY' | tee -a "$out/cluster-runs.txt" >&2
import sys, re, json
def read(path):
    values = {}
    for line in open(path):
        name, value = line.rsplit(" ", 1)
        values[name] = float(value)
    return values
before, after = read(sys.argv[1]), read(sys.argv[2])
delta = {k: v - before.get(k, 0.0) for k, v in after.items()}
def metric(prefix):
    return sum(v for k, v in delta.items() if k.startswith(prefix))
def script(name, kind):
    return metric(f'flashsale_redis_script_duration_seconds_{kind}{{script="{name}"}}')
campaign = json.load(open(sys.argv[3]))
line = [f"sellout_transfers={metric('flashsale_shard_transfers_total'):g}",
        f"units_moved={metric('flashsale_shard_transferred_units_total'):g}",
        f"sold={campaign['held'] + campaign['confirmed']} of {campaign['stock']} available={campaign['available']}"]
for name in ["reserve", "claim_key", "shard_state", "transfer_take", "transfer_give", "transfer_done"]:
    line.append(f"{name}_calls={script(name, 'count'):g} {name}_ms={script(name, 'sum') * 1000:.1f}")
print(" ".join(line))
PY
