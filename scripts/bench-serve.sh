#!/usr/bin/env bash
# stn-serve against its peer, KServe's Python model server around onnxruntime
# (scripts/serve_peer_kserve.py), on the same ONNX file, protocol, machine and threads: wrk sends
# one 28×28 image per JSON request from 1, 16 and 64 connections; prints requests/s, p50/p99/p99.9
# latency and errors for each, and the ratios. Needs wrk (Debian's package) and a Python with
# kserve and onnxruntime: KSERVE_PYTHON (made in target/kserve-venv on first use).
#   scripts/bench-serve.sh [SECONDS]
#   SERVE_CPUS=0 LOAD_CPUS=1 scripts/bench-serve.sh   # servers and wrk on separate CPUs (taskset lists)
#   SERVE_TOGETHER=1 scripts/bench-serve.sh          # both servers up throughout (each is measured alone by default)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
command -v wrk >/dev/null || { echo "bench-serve: needs wrk (apt-get install wrk)" >&2; exit 1; }
py=${KSERVE_PYTHON:-}
if [[ -z $py ]]; then
  if [[ ! -x target/kserve-venv/bin/python ]]; then
    python3 -m venv target/kserve-venv
    target/kserve-venv/bin/pip install --quiet --disable-pip-version-check kserve==0.21.0 onnxruntime==1.32.0 >&2
  fi
  py=target/kserve-venv/bin/python
fi
[[ -n ${STN_NO_BUILD:-} ]] || cargo build --release --quiet --bin stn-serve
tmp=$(mktemp -d)
pids=()
# The servers' own pids (each started as a plain command, so `$!` is the server, not a subshell
# around it: killing a subshell left its server running, and the next run then measured that one).
cleanup() { [[ ${#pids[@]} -eq 0 ]] || { kill "${pids[@]}" 2>/dev/null; wait "${pids[@]}" 2>/dev/null; }; rm -rf "$tmp"; }
trap cleanup EXIT
for port in 8123 8124; do
  if curl -s -o /dev/null "localhost:$port/"; then
    echo "bench-serve: something already listens on port $port (a server left by an earlier run?); stop it first" >&2
    exit 1
  fi
done
python3 - "$tmp/one.json" <<'PY'
import json, sys
x = [((i * 37) % 255 / 255 - 0.1307) / 0.3081 for i in range(784)]
json.dump({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": x}]}, open(sys.argv[1], "w"))
PY
cat > "$tmp/post.lua" <<LUA
wrk.method = "POST"
local f = io.open("$tmp/one.json", "rb"); wrk.body = f:read("*all"); f:close()
wrk.headers["Content-Type"] = "application/json"
done = function(s, lat, req)
  io.write(string.format("%.0f %.3f %.3f %.3f %d\n", s.requests / (s.duration / 1e6), lat:percentile(50) / 1000,
    lat:percentile(99) / 1000, lat:percentile(99.9) / 1000,
    s.errors.connect + s.errors.read + s.errors.write + s.errors.timeout + s.errors.status))
end
LUA
# Runs a command on the CPUs of a taskset list, or anywhere when the list is empty.
pin() { local cpus=$1; shift; if [[ -n $cpus ]]; then taskset -c "$cpus" "$@"; else "$@"; fi; }
wait_up() { # port pid log
  for _ in $(seq 100); do
    curl -sf "localhost:$1/v2/health/ready" >/dev/null && return
    kill -0 "$2" 2>/dev/null || { echo "bench-serve: the server for port $1 exited:" >&2; cat "$3" >&2; exit 1; }
    sleep 0.2
  done
  echo "bench-serve: the server on port $1 did not start in 20 s:" >&2; cat "$3" >&2; exit 1
}
run() { # port clients -> "rps p50 p99 p999 errors"
  local t=$(( $2 < 2 ? 1 : 2 ))
  pin "${LOAD_CPUS:-}" wrk -t$t -c$2 -d${secs}s -s "$tmp/post.lua" "http://127.0.0.1:$1/v2/models/stn/infer" | tail -1
}
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p'); isa: $(./target/release/stn-serve --version); servers on CPUs ${SERVE_CPUS:-any}, wrk on ${LOAD_CPUS:-any}"
serve_pin=(); [[ -z ${SERVE_CPUS:-} ]] || serve_pin=(taskset -c "$SERVE_CPUS")
start() { # stn|peer: starts that server and waits until it is ready
  if [[ $1 == stn ]]; then
    "${serve_pin[@]}" ./target/release/stn-serve --model models/stn.onnx --addr 127.0.0.1:8123 --threads 2 --http-threads 2 >/dev/null 2>"$tmp/stn.log" &
    stn_pid=$!; pids+=($!); wait_up 8123 "$stn_pid" "$tmp/stn.log"; warm 8123
  else
    "${serve_pin[@]}" "$py" scripts/serve_peer_kserve.py --model models/stn.onnx --port 8124 --threads 2 >"$tmp/peer.log" 2>&1 &
    peer_pid=$!; pids+=($!); wait_up 8124 "$peer_pid" "$tmp/peer.log"; warm 8124
  fi
}
warm() { # port: a second of load first, not counted (each start is a cold process)
  pin "${LOAD_CPUS:-}" wrk -t1 -c4 -d1s -s "$tmp/post.lua" "http://127.0.0.1:$1/v2/models/stn/infer" >/dev/null
}
stop() { kill "$1" 2>/dev/null; wait "$1" 2>/dev/null || true; }
# Each server is measured alone (started, loaded, stopped), as it would be deployed: on these 2
# vCPUs stn-serve's one-client tail is other processes' work (alone, by hand, p99 0.25 ms; beside
# two busy loops 3.2 ms), and an idle peer is one more process. SERVE_TOGETHER=1 keeps both up
# throughout, as before.
together=${SERVE_TOGETHER:-}
[[ -z $together ]] || { start stn; start peer; }
if [[ -n $together ]]; then echo "servers measured together"; else echo "servers measured one at a time"; fi
printf "%-8s %-10s %9s %8s %8s %9s %7s\n" clients server req/s p50_ms p99_ms p99.9_ms errors
for c in 1 16 64; do
  [[ -n $together ]] || start stn
  read -r a1 a2 a3 a4 a5 < <(run 8123 $c)
  [[ -n $together ]] || { stop "$stn_pid"; start peer; }
  read -r b1 b2 b3 b4 b5 < <(run 8124 $c)
  [[ -n $together ]] || stop "$peer_pid"
  printf "%-8s %-10s %9s %8s %8s %9s %7s\n" $c stn-serve $a1 $a2 $a3 $a4 $a5 $c kserve $b1 $b2 $b3 $b4 $b5
  python3 -c "print(f'         ratio: throughput {$a1/$b1:.1f}x, p99 {$a3/$b3:.2f} of the peer\'s')"
done
