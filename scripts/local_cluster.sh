#!/usr/bin/env bash
# A real multi-node Ray cluster on this machine: a head node and one worker node,
# each a `ray start --block` of its own (own --temp-dir, own CPUs), bound to
# 127.0.0.1, with token authentication (RAY_AUTH_MODE=token and a token file of
# mode 600 that this script writes).
#
#   bash scripts/local_cluster.sh up       # start the head and the worker node (each only if not running)
#   bash scripts/local_cluster.sh status   # which nodes run, the addresses, the token file
#   bash scripts/local_cluster.sh env      # lines to `eval`: RAY_ADDRESS, RAY_AUTH_MODE, RAY_AUTH_TOKEN_PATH
#   bash scripts/local_cluster.sh down     # stop exactly the nodes this script started
#
# Then, from the repository root:
#   eval "$(bash scripts/local_cluster.sh env)"
#   ray job submit --working-dir . -- python jobs/pretrain.py --config configs/pretrain_smoke.yaml ...
#
# `down` never runs `ray stop` (that would stop every Ray on the machine, other
# users' and other tests' included): it ends the process groups it started (each
# node runs in its own session, setsid) and then any process left whose command
# line names this cluster's temp dirs.
#
# Settings (environment):
#   RAYSV_CLUSTER_DIR      state, logs, token and temp dirs   (default /tmp/raysv-cluster)
#   RAYSV_GCS_PORT         head's GCS port                    (default 6390)
#   RAYSV_DASHBOARD_PORT   dashboard and Jobs API             (default 8275)
#   RAYSV_CLIENT_PORT      Ray Client server port             (default 20011; not in 10002-19999,
#                          the worker ports)
#   RAYSV_HEAD_CPUS        logical CPUs of the head node      (default 3)
#   RAYSV_WORKER_CPUS      logical CPUs of the worker node    (default 3)
# (Logical CPUs, more than the machine's cores: with 3 a node, two Train workers of
# 1.6 CPUs (--set train.cpus_per_worker=1.6) cannot share a node, so a 2-worker run
# has one on each, and each node keeps 1.4 CPUs for Ray Data's tasks.)
#   RAYSV_OBJECT_STORE     object store bytes per node        (default 512 MB)
# Keep RAYSV_CLUSTER_DIR short: Ray's Unix socket paths live under it (107 bytes at most).
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
dir="${RAYSV_CLUSTER_DIR:-/tmp/raysv-cluster}"
gcs_port="${RAYSV_GCS_PORT:-6390}"
dash_port="${RAYSV_DASHBOARD_PORT:-8275}"
client_port="${RAYSV_CLIENT_PORT:-20011}"
head_cpus="${RAYSV_HEAD_CPUS:-3}"
worker_cpus="${RAYSV_WORKER_CPUS:-3}"
store="${RAYSV_OBJECT_STORE:-512000000}"
ray_bin="$here/.venv/bin/ray"
token="$dir/auth_token"

# Job drivers and their workers inherit this PATH: `python` is the venv's.
export PATH="$here/.venv/bin:$PATH"
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH="$token"
unset RAY_AUTH_TOKEN
# Ray processes that look for "the" cluster without an address (Ray Train's
# PlacementGroupCleaner does) would otherwise find every Ray on the machine.
export RAY_ADDRESS="127.0.0.1:$gcs_port"

alive() { # alive NAME: the node's `ray start` process still runs
  [[ -f "$dir/$1.pid" ]] && kill -0 "$(cat "$dir/$1.pid")" 2>/dev/null
}

start_node() { # start_node NAME ARGS...: `ray start --block` in its own session
  local name="$1"
  shift
  mkdir -p "$dir/$name"
  setsid "$ray_bin" start --block --disable-usage-stats --node-ip-address=127.0.0.1 \
    --temp-dir="$dir/$name" --object-store-memory="$store" \
    --dashboard-agent-listen-port=0 "$@" >"$dir/$name.log" 2>&1 </dev/null &
  echo $! >"$dir/$name.pid"
}

wait_nodes() { # wait_nodes N: until the cluster has N alive nodes (60 s)
  local want="$1"
  for _ in $(seq 120); do
    for name in head worker; do
      if [[ -f "$dir/$name.pid" ]] && ! alive "$name"; then
        echo "local_cluster: the $name node exited; its log, $dir/$name.log:" >&2
        tail -20 "$dir/$name.log" >&2
        return 1
      fi
    done
    n=$("$here/.venv/bin/python" - "$gcs_port" <<'EOF' 2>/dev/null || echo 0
import sys
from ray._raylet import GcsClient
nodes = GcsClient(address=f"127.0.0.1:{sys.argv[1]}").get_all_node_info(timeout=5)
print(sum(1 for n in nodes.values() if n.state == 0))
EOF
)
    [[ "$n" -ge "$want" ]] && return 0
    sleep 0.5
  done
  echo "local_cluster: $want nodes not up after 60 s (logs under $dir)" >&2
  return 1
}

up() {
  mkdir -p "$dir"
  if [[ ! -s "$token" ]]; then
    (umask 077 && "$here/.venv/bin/python" -c "import secrets; print(secrets.token_hex(32), end='')" >"$token")
  fi
  chmod 600 "$token"
  if ! alive head; then
    start_node head --head --port="$gcs_port" --num-cpus="$head_cpus" \
      --ray-client-server-port="$client_port" --include-dashboard=true \
      --dashboard-host=127.0.0.1 --dashboard-port="$dash_port"
    wait_nodes 1
  fi
  if ! alive worker; then
    start_node worker --address="127.0.0.1:$gcs_port" --num-cpus="$worker_cpus"
    wait_nodes 2
  fi
  # The Jobs API answers once the dashboard's job module is up.
  for _ in $(seq 120); do
    if "$here/.venv/bin/python" - "$dash_port" "$token" <<'EOF' 2>/dev/null; then
import sys, urllib.request
req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/api/version",
                             headers={"Authorization": "Bearer " + open(sys.argv[2]).read().strip()})
urllib.request.urlopen(req, timeout=2).read()
EOF
      status
      return 0
    fi
    sleep 0.5
  done
  echo "local_cluster: the dashboard did not answer on 127.0.0.1:$dash_port (log: $dir/head/session_latest/logs/dashboard.log)" >&2
  return 1
}

status() {
  for name in head worker; do
    if alive "$name"; then
      echo "$name: running (ray start pid $(cat "$dir/$name.pid"), temp dir $dir/$name)"
    else
      echo "$name: not running"
    fi
  done
  echo "address: 127.0.0.1:$gcs_port"
  echo "jobs api: http://127.0.0.1:$dash_port"
  echo "token file: $token"
  alive head && alive worker
}

env_lines() {
  echo "export RAY_ADDRESS=http://127.0.0.1:$dash_port"
  echo "export RAY_AUTH_MODE=token"
  echo "export RAY_AUTH_TOKEN_PATH=$token"
}

our_pids() { # processes whose command line names this cluster's temp dirs
  grep -laE -- "$dir/(head|worker)" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3 || true
}

down() {
  local name pid
  for name in worker head; do
    if [[ -f "$dir/$name.pid" ]]; then
      pid="$(cat "$dir/$name.pid")"
      # `ray start --block` was started with setsid: its pid is its process group.
      kill -TERM -- "-$pid" 2>/dev/null || true
    fi
  done
  for _ in $(seq 40); do
    [[ -z "$(our_pids)" ]] && ! alive head && ! alive worker && break
    sleep 0.5
  done
  for name in worker head; do
    if [[ -f "$dir/$name.pid" ]]; then
      kill -KILL -- "-$(cat "$dir/$name.pid")" 2>/dev/null || true
      rm -f "$dir/$name.pid"
    fi
  done
  for pid in $(our_pids); do
    kill -KILL "$pid" 2>/dev/null || true
  done
  echo "local_cluster: down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  env) env_lines ;;
  *)
    echo "usage: $0 up|down|status|env" >&2
    exit 2
    ;;
esac
