#!/usr/bin/env bash
# N processes of one program on this machine, connected by jax.distributed (the multi-process
# path of a pod slice or a GPU cluster, on one host; the tests use it too).
#
# Usage:
#   launchers/multiprocess.sh [options] N [CONFIG[:ARG] [WORKDIR]] [--config.field=value ...]
#   launchers/multiprocess.sh [options] N -- COMMAND [ARG ...]
# The first form runs `python -m rlhf_jax.main --config CONFIG --workdir WORKDIR ...` (default
# configs/sentiment.py, runs/sentiment) in the project's environment (launchers/setup_env.sh,
# as local.sh does; --python PY uses PY instead); the second runs any command N times.
#
# Options:
#   --port P            coordinator port on 127.0.0.1 (default: a free port)
#   --cpu-devices D     simulated CPU devices per process (JAX_PLATFORMS=cpu,
#                       JAX_NUM_CPU_DEVICES=D): N*D devices in all
#   --gpus-per-process G  process i owns GPUs i*G .. i*G+G-1 (JAX_LOCAL_DEVICE_IDS)
#   --log-dir DIR       process i writes DIR/process-i.log (default: the terminal)
#   --grace S           seconds between SIGTERM and SIGKILL for the others when one fails (30)
#   --python PY         interpreter for the first form (default: the project's .venv)
#   --dry-run           print the commands instead of running them
#
# Every process gets RLHF_JAX_COORDINATOR_ADDRESS=127.0.0.1:P, RLHF_JAX_NUM_PROCESSES=N and
# RLHF_JAX_PROCESS_ID=i, which rlhf_jax.distributed.maybe_initialize() reads (rlhf_jax.main
# calls it first). When one process exits non-zero the others get SIGTERM (rlhf_jax.main saves
# a checkpoint and exits 75), then SIGKILL after --grace seconds; the exit status is the first
# failure's (0 when all succeed). SIGINT/SIGTERM to this script go to every process.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; }
die() { echo "multiprocess.sh: $*" >&2; echo "(launchers/multiprocess.sh --help for usage)" >&2; exit 2; }
need_int() { [[ "$2" =~ ^[0-9]+$ ]] || die "$1 expects a non-negative integer, got '$2'"; }

dry_run=0 port="" cpu_devices="" gpus="" log_dir="" grace=30 python=""
while [ "$#" -gt 0 ]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --dry-run) dry_run=1; shift ;;
    --port | --cpu-devices | --gpus-per-process | --log-dir | --grace | --python)
      [ "$#" -ge 2 ] || die "$1 needs a value"
      case "$1" in
        --port) need_int "$1" "$2"; port="$2" ;;
        --cpu-devices) need_int "$1" "$2"; cpu_devices="$2" ;;
        --gpus-per-process) need_int "$1" "$2"; gpus="$2" ;;
        --log-dir) log_dir="$2" ;;
        --grace) need_int "$1" "$2"; grace="$2" ;;
        --python) python="$2" ;;
      esac
      shift 2 ;;
    --*=*) die "write options as '--name value' ('$1')" ;;
    -*) die "unknown option '$1'" ;;
    *) break ;;
  esac
done
[ "$#" -ge 1 ] || die "missing N (the number of processes)"
need_int "N" "$1"
n="$1"; shift
[ "$n" -ge 1 ] || die "N must be >= 1, got $n"
[ -z "$cpu_devices" ] || [ "$cpu_devices" -ge 1 ] || die "--cpu-devices must be >= 1"
[ -z "$gpus" ] || [ "$gpus" -ge 1 ] || die "--gpus-per-process must be >= 1"
[ -z "$port" ] || { [ "$port" -ge 1 ] && [ "$port" -le 65535 ]; } || die "--port must be 1..65535"

if [ "${1:-}" = "--" ]; then
  shift
  [ "$#" -ge 1 ] || die "nothing to run after '--'"
  cmd=("$@")
else
  config="configs/sentiment.py" workdir="runs/sentiment"
  if [ "$#" -ge 1 ] && [[ "$1" != --* ]]; then config="$1"; shift; fi
  if [ "$#" -ge 1 ] && [[ "$1" != --* ]]; then workdir="$1"; shift; fi
  setup=""
  if [ -z "$python" ]; then
    setup="source $(dirname "$0")/setup_env.sh base"
    python="python"
  fi
  cmd=("$python" -m rlhf_jax.main --config "$config" --workdir "$workdir" "$@")
fi

if [ -z "$port" ]; then
  # A port that is free now (the coordinator binds it a moment later).
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi

# The environment of process $1, as NAME=VALUE words.
process_env() {
  local i="$1"
  local -a env=(
    "RLHF_JAX_COORDINATOR_ADDRESS=127.0.0.1:$port"
    "RLHF_JAX_NUM_PROCESSES=$n"
    "RLHF_JAX_PROCESS_ID=$i"
  )
  if [ -n "$cpu_devices" ]; then
    env+=("JAX_PLATFORMS=cpu" "JAX_NUM_CPU_DEVICES=$cpu_devices")
  fi
  if [ -n "$gpus" ]; then
    local ids="" g
    for ((g = i * gpus; g < (i + 1) * gpus; g++)); do ids="${ids:+$ids,}$g"; done
    env+=("JAX_LOCAL_DEVICE_IDS=$ids")
  fi
  printf '%s\n' "${env[@]}"
}

if [ "$dry_run" -eq 1 ]; then
  [ -z "${setup:-}" ] || echo "$setup"
  for ((i = 0; i < n; i++)); do
    mapfile -t env < <(process_env "$i")
    line="env$(printf ' %q' "${env[@]}" "${cmd[@]}")"
    [ -z "$log_dir" ] || line="$line > $(printf '%q' "$log_dir/process-$i.log") 2>&1"
    echo "$line &"
  done
  echo "wait  # on the first non-zero exit: SIGTERM the others, SIGKILL after ${grace}s"
  exit 0
fi

if [ -n "${setup:-}" ]; then
  # shellcheck source=launchers/setup_env.sh
  source "$(dirname "$0")/setup_env.sh" base
fi
[ -z "$log_dir" ] || mkdir -p "$log_dir"
pids=()
# Each process leads its own process group (setsid), so a signal reaches whatever it started.
setsid=()
if command -v setsid > /dev/null; then setsid=(setsid); fi
terminate() {  # $1: signal; sends it to every process (group) still running
  local p
  for p in "${pids[@]}"; do
    kill "-$1" -- "-$p" 2>/dev/null || kill "-$1" "$p" 2>/dev/null || true
  done
}
trap 'terminate TERM' INT TERM
for ((i = 0; i < n; i++)); do
  mapfile -t env < <(process_env "$i")
  if [ -n "$log_dir" ]; then
    "${setsid[@]}" env "${env[@]}" "${cmd[@]}" > "$log_dir/process-$i.log" 2>&1 &
  else
    "${setsid[@]}" env "${env[@]}" "${cmd[@]}" &
  fi
  pids+=("$!")
done
echo "[multiprocess] $n processes (pids ${pids[*]}), coordinator 127.0.0.1:$port" >&2

# Poll (portable to bash 4, unlike `wait -n -p`): reap each process as it ends; after the
# first failure the others get SIGTERM, and SIGKILL once --grace seconds have passed.
status=0 left="$n" failed_at=""
declare -A running=()
for p in "${pids[@]}"; do running[$p]=1; done
while [ "$left" -gt 0 ]; do
  for p in "${!running[@]}"; do
    if kill -0 "$p" 2>/dev/null; then continue; fi
    rc=0
    wait "$p" || rc=$?
    unset "running[$p]"
    left=$((left - 1))
    if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then
      status="$rc"
      failed_at="$SECONDS"
      echo "[multiprocess] pid $p exited with status $rc: stopping the others" >&2
      terminate TERM
    fi
  done
  if [ -n "$failed_at" ] && [ "$left" -gt 0 ] && [ $((SECONDS - failed_at)) -ge "$grace" ]; then
    terminate KILL
  fi
  [ "$left" -eq 0 ] || sleep 0.2
done
exit "$status"
