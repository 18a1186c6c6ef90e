#!/usr/bin/env bash
# Runs the scenarios behind docs/BENCHMARKS.md, each against a fresh
# conformance app, and appends every run's JSON line to a file.
#
#   bash fawkes-bench/figures.sh [RUNS] [SCENARIO ...] > figures.jsonl
#
# SCENARIO: connect fanout fanout-burst pingpong churn inprocess (default:
# all). RUNS: runs of each (default 3). Human summaries go to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

runs="${1:-3}"
shift || true
scenarios=("$@")
[ ${#scenarios[@]} -eq 0 ] && scenarios=(connect fanout fanout-burst pingpong churn inprocess)

cargo build --release --locked --bin fawkes-conformance --bin fawkes-bench >&2
server_bin=target/release/fawkes-conformance
bench=target/release/fawkes-bench
port=4400
url="ws://127.0.0.1:$port/socket/websocket"

# One run: a fresh server, the tool with its pid, the server stopped. The
# tool's last line is its JSON report.
run() {
  "$server_bin" --port "$port" >/dev/null 2>&1 &
  local pid=$!
  for _ in $(seq 50); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    sleep 0.1
  done
  local out rc=0
  out=$("$bench" "$@" --server-pid "$pid" 2> >(cat >&2)) || rc=$?
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  printf '%s\n' "$out" | sed '$d' >&2
  printf '%s\n' "$out" | tail -n 1
  [ "$rc" -eq 0 ] || echo "run failed with exit code $rc: $*" >&2
  sleep 2
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
      *)
        echo "unknown scenario: $scenario" >&2
        exit 2 ;;
    esac
  done
done
