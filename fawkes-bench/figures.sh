#!/usr/bin/env bash
# Runs the scenarios behind docs/BENCHMARKS.md, each against a fresh
# conformance app, and appends every run's JSON line to a file.
#
#   bash fawkes-bench/figures.sh [RUNS] [SCENARIO ...] > figures.jsonl
#
# SCENARIO: connect fanout fanout-burst pingpong churn inprocess cluster
# (default: all but cluster, which needs redis-server). RUNS: runs of each
# (default 3). Human summaries go to stderr. Binaries are built into
# $CARGO_TARGET_DIR (default target/).
set -euo pipefail
cd "$(dirname "$0")/.."

runs="${1:-3}"
shift || true
scenarios=("$@")
[ ${#scenarios[@]} -eq 0 ] && scenarios=(connect fanout fanout-burst pingpong churn inprocess)

cargo build --release --locked --bin fawkes-conformance --bin fawkes-bench >&2
target_dir="${CARGO_TARGET_DIR:-target}"
server_bin="$target_dir/release/fawkes-conformance"
bench="$target_dir/release/fawkes-bench"
port=4400
url="ws://127.0.0.1:$port/socket/websocket"

wait_port() {
  for _ in $(seq 50); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2
  return 1
}

# A run's human lines to stderr, its JSON line (the last) to stdout, and
# a word if it failed: report RC OUTPUT WHAT.
report() {
  printf '%s\n' "$2" | sed '$d' >&2
  printf '%s\n' "$2" | tail -n 1
  [ "$1" -eq 0 ] || echo "run failed with exit code $1: $3" >&2
}

# One run: a fresh server, the tool with its pid, the server stopped. The
# tool's last line is its JSON report.
run() {
  "$server_bin" --port "$port" >/dev/null 2>&1 &
  local pid=$!
  wait_port "$port" || true
  local out rc=0
  out=$("$bench" "$@" --server-pid "$pid" 2> >(cat >&2)) || rc=$?
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  report "$rc" "$out" "$*"
  sleep 2
}

# The cluster's own Redis, on a free port: its byte counters then count
# only the cluster's traffic.
redis_pid=
redis_port=
start_redis() {
  [ -n "$redis_pid" ] && return
  redis_port=6390
  while (exec 3<>"/dev/tcp/127.0.0.1/$redis_port") 2>/dev/null; do
    redis_port=$((redis_port + 1))
  done
  redis-server --port "$redis_port" --save "" --appendonly no >/dev/null 2>&1 &
  redis_pid=$!
  wait_port "$redis_port"
}
stop_redis() {
  if [ -n "$redis_pid" ]; then kill "$redis_pid" 2>/dev/null || true; wait "$redis_pid" 2>/dev/null || true; fi
}
trap stop_redis EXIT

# One cluster run: NODES fresh nodes on ports 4410.. in a namespace of
# their own with ROUTING, the tool with PLACEMENT and the shape's options,
# the nodes stopped.
cluster_run() {
  local nodes=$1 routing=$2 placement=$3
  shift 3
  local ns="figures-$$-$RANDOM" urls=() pids=() j
  echo "load average $(cut -d" " -f1 /proc/loadavg)" >&2
  for j in $(seq 0 $((nodes - 1))); do
    "$server_bin" --port $((4410 + j)) --node-name "node-$j" \
      --pubsub "redis://127.0.0.1:$redis_port" --pubsub-namespace "$ns" \
      --pubsub-routing "$routing" >/dev/null 2>&1 &
    pids+=($!)
    urls+=("ws://127.0.0.1:$((4410 + j))/socket/websocket")
  done
  for j in $(seq 0 $((nodes - 1))); do wait_port $((4410 + j)); done
  local out rc=0
  out=$("$bench" cluster --nodes "$(IFS=,; echo "${urls[*]}")" \
    --node-pids "$(IFS=,; echo "${pids[*]}")" \
    --redis-url "redis://127.0.0.1:$redis_port" --pubsub-namespace "$ns" \
    --pubsub-routing "$routing" --placement "$placement" "$@" 2> >(cat >&2)) || rc=$?
  kill "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  report "$rc" "$out" "cluster $nodes $routing $placement $*"
  sleep 1
}

for scenario in "${scenarios[@]}"; do
  for i in $(seq "$runs"); do
    echo "== $scenario, run $i of $runs" >&2
    case "$scenario" in
      connect)
        run connect --url "$url" --connections 19000 --topics 100 --rate 2000 \
          --hold 10 --workers 2 --source-addrs 2 ;;
      fanout)
        run fanout --url "$url" --subscribers 5000 --broadcasts 20 --interval 200 ;;
      fanout-burst)
        run fanout --url "$url" --subscribers 10000 --broadcasts 20 --burst 20 \
          --interval 0 ;;
      pingpong)
        # Two worker processes: the tool saturates the machine, so the
        # server's CPU per reply is the figure that holds under load.
        run pingpong --url "$url" --clients 100 --in-flight 10 --duration 10 --workers 2 ;;
      churn)
        # A minute of warm-up, then a minute in which nothing may grow.
        run churn --url "$url" --loops 20 --warmup 60 --duration 60 --source-addrs 8 --workers 2 ;;
      inprocess)
        "$bench" --threads 2 inprocess --sockets 1000000 2> >(cat >&2) | tail -n 1 ;;
      cluster)
        # 1,200 subscribers on 12 topics (100 per broadcast), 2 then 3
        # nodes; both routings alternate within a run, so their ratios come
        # from one sitting. One at a time: 300 broadcasts 10 ms apart.
        # Sustained: 3,000 broadcasts in bursts of 50, back to back.
        start_redis
        for nodes in 2 3; do
          for placement in everywhere local; do
            for routing in all sharded; do
              echo "-- cluster: $nodes nodes, $routing, $placement, one at a time" >&2
              cluster_run "$nodes" "$routing" "$placement" --subscribers 1200 --topics 12 \
                --broadcasts 300 --interval 10
              echo "-- cluster: $nodes nodes, $routing, $placement, bursts" >&2
              cluster_run "$nodes" "$routing" "$placement" --subscribers 1200 --topics 12 \
                --broadcasts 3000 --burst 50 --interval 0
            done
          done
        done ;;
      *)
        echo "unknown scenario: $scenario" >&2
        exit 2 ;;
    esac
  done
done
