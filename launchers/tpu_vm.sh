#!/usr/bin/env bash
# Run a config on every worker of a Cloud TPU VM (one host or a multi-host pod slice) and keep
# it running through preemptions until it completes.
#
# Usage:
#   launchers/tpu_vm.sh --name NAME --zone ZONE [options] CONFIG[:ARG] WORKDIR [--config.x=v ...]
#
# Options:
#   --project P            gcloud project (default: gcloud's configured project)
#   --create               create the TPU VM if it does not exist, and recreate it after a
#                          preemption (needs --accelerator-type)
#   --queued               the same through a queued resource (queued-resources create: waits
#                          in the queue for capacity instead of failing)
#   --accelerator-type T   e.g. v4-32, v5litepod-16, v5p-64, v6e-8
#   --version V            TPU software version (default: tpu-ubuntu2204-base)
#   --spot                 Spot capacity (cheaper, preemptible)
#   --best-effort          queued resource with best-effort capacity (gcloud alpha)
#   --reserved             capacity from a reservation
#   --commit REV           the commit to run (default HEAD); uncommitted changes are not shipped
#   --mount-bucket B       mount gs://B with gcsfuse at --mount-point on every worker first
#   --mount-point DIR      (default /mnt/rlhf_jax); put WORKDIR under it
#   --log-dir DIR          local logs (default runs/tpu_logs/NAME): attempt-K/ssh.log (all
#                          workers, as streamed) and attempt-K/worker-W.log (each worker's own)
#   --max-restarts N       relaunches after preemption or a lost connection (default 20)
#   --poll S               seconds between state checks while the TPU is not ready (default 30)
#   --num-workers N        hosts in the slice (default: counted from `describe`)
#   --delete-when-done     delete the TPU (or queued resource) once the run has completed
#   --dry-run              print every command (gcloud, git, tar) instead of running it
#   --simulate-preemption  with --dry-run: the first attempt is preempted (shows the recovery)
#
# What it does: `git archive` of the commit into rlhf_jax-<commit>.tar.gz, copied with
# `gcloud compute tpus tpu-vm scp --worker=all` to every worker, unpacked, installed into a
# virtual environment with jax[tpu], and run with `gcloud compute tpus tpu-vm ssh --worker=all`
# as `python -m rlhf_jax.main --config CONFIG --workdir WORKDIR --config.distributed.auto=True`
# (jax.distributed.initialize() finds the other workers through the TPU metadata). When the
# run stops early, the TPU's state decides: PREEMPTED / TERMINATED (a queued resource:
# SUSPENDED / FAILED) -> delete, recreate, ship and relaunch; exit status 75 (SIGTERM: a
# checkpoint was saved) or 255 (ssh lost) on a READY TPU -> relaunch; anything else (1 failed,
# 2 a config error) -> stop with that status. The program resumes from WORKDIR's checkpoints,
# so WORKDIR must outlive the VMs and be one directory for all workers: a gcsfuse-mounted bucket
# (--mount-bucket) or an NFS share (Filestore) mounted at the same path on every worker. A VM's
# own disk is lost when a Spot TPU is deleted. (Orbax itself writes gs:// URLs, but the rest of
# the workdir -- config.json, metrics, reports -- is written with ordinary file I/O, so WORKDIR
# must be a mounted path, not a gs:// URL.)
#
# Example (a v5e pod slice on Spot capacity, queued until available):
#   launchers/tpu_vm.sh --name rlhf-v5e --zone us-west4-a --queued --spot \
#     --accelerator-type v5litepod-16 --mount-bucket my-bucket \
#     configs/sentiment.py /mnt/rlhf_jax/runs/sentiment --config.mesh.fsdp=-1
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; }
die() { echo "tpu_vm.sh: $*" >&2; echo "(launchers/tpu_vm.sh --help for usage)" >&2; exit 2; }
need_int() { [[ "$2" =~ ^[0-9]+$ ]] || die "$1 expects a non-negative integer, got '$2'"; }

name="" zone="" project="" create=0 queued=0 accel="" version="tpu-ubuntu2204-base"
capacity="" rev="HEAD" bucket="" mount_point="/mnt/rlhf_jax" log_dir="" max_restarts=20
poll=30 num_workers="" delete_when_done=0 dry_run=0 simulate_preemption=0
while [ "$#" -gt 0 ]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --create) create=1; shift ;;
    --queued) queued=1; shift ;;
    --spot | --best-effort | --reserved)
      [ -z "$capacity" ] || die "choose one of --spot, --best-effort, --reserved"
      capacity="$1"; shift ;;
    --delete-when-done) delete_when_done=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    --simulate-preemption) simulate_preemption=1; shift ;;
    --name | --zone | --project | --accelerator-type | --version | --commit | --mount-bucket | \
      --mount-point | --log-dir | --max-restarts | --poll | --num-workers)
      if [ "$#" -lt 2 ] || [[ "$2" == --* ]]; then die "$1 needs a value"; fi
      case "$1" in
        --name) name="$2" ;;
        --zone) zone="$2" ;;
        --project) project="$2" ;;
        --accelerator-type) accel="$2" ;;
        --version) version="$2" ;;
        --commit) rev="$2" ;;
        --mount-bucket) bucket="${2#gs://}" ;;
        --mount-point) mount_point="$2" ;;
        --log-dir) log_dir="$2" ;;
        --max-restarts) need_int "$1" "$2"; max_restarts="$2" ;;
        --poll) need_int "$1" "$2"; poll="$2" ;;
        --num-workers) need_int "$1" "$2"; num_workers="$2" ;;
      esac
      shift 2 ;;
    --config | --config=* | --workdir | --workdir=*)
      die "give CONFIG and WORKDIR as positional arguments, not $1" ;;
    --*) die "unknown option '$1'" ;;
    *) break ;;
  esac
done
[ -n "$name" ] || die "--name is required (the TPU VM's name)"
[ -n "$zone" ] || die "--zone is required (e.g. us-central2-b)"
[ "$#" -ge 2 ] || die "expected CONFIG[:ARG] WORKDIR after the options"
config="$1" workdir="$2"; shift 2
for a in "$@"; do
  [[ "$a" == --config.* ]] || die "after WORKDIR only --config.field=value overrides, got '$a'"
done
[ "$create" -eq 0 ] || [ "$queued" -eq 0 ] || die "choose one of --create and --queued"
if [ "$create" -eq 1 ] || [ "$queued" -eq 1 ]; then
  [ -n "$accel" ] || die "--create / --queued need --accelerator-type (e.g. v4-8)"
fi
[ "$capacity" != "--best-effort" ] || [ "$queued" -eq 1 ] || die "--best-effort needs --queued"
[ -n "$num_workers" ] && [ "$num_workers" -lt 1 ] && die "--num-workers must be >= 1"
[ "$simulate_preemption" -eq 0 ] || [ "$dry_run" -eq 1 ] || die "--simulate-preemption needs --dry-run"
if [[ "$workdir" == gs://* ]]; then
  die "WORKDIR=$workdir: use a mounted path (--mount-bucket ${workdir#gs://} and a WORKDIR under --mount-point), not a gs:// URL"
fi
if [ -n "$bucket" ] && [[ "$workdir" != "$mount_point"/* ]]; then
  echo "tpu_vm.sh: warning: WORKDIR=$workdir is not under --mount-point $mount_point;" \
    "checkpoints stay on the VMs' disks and a recreated TPU starts over" >&2
fi

root="$(cd "$(dirname "$0")/.." && pwd)"
commit="$(git -C "$root" rev-parse --verify "$rev^{commit}" 2>/dev/null)" \
  || die "--commit $rev: not a commit of $root"
if [ "$rev" = "HEAD" ] && [ -n "$(git -C "$root" status --porcelain --untracked-files=no)" ]; then
  echo "tpu_vm.sh: warning: uncommitted changes are not shipped; running commit $commit" >&2
fi
log_dir="${log_dir:-$root/runs/tpu_logs/$name}"
src="rlhf_jax-$commit"
tarball="${TMPDIR:-/tmp}/$src.tar.gz"
run_script="${TMPDIR:-/tmp}/$src.run.sh"

where=(--zone "$zone")
[ -z "$project" ] || where+=(--project "$project")

# Prints a command (dry run; on fd 3, the script's stdout even inside $(...)) or runs it.
exec 3>&1
run() {
  if [ "$dry_run" -eq 1 ]; then
    { printf '%q' "$1"; shift; printf ' %q' "$@"; echo; } >&3
  else
    "$@"
  fi
}

# The TPU's state: READY / CREATING / PREEMPTED / ... (a queued resource: ACTIVE /
# WAITING_FOR_RESOURCES / SUSPENDED / FAILED / ...), NOT_FOUND when there is none.
# The dry run's story: nothing exists yet (with --create/--queued), create makes it ready, and
# with --simulate-preemption the first attempt ends with the TPU preempted.
dry_state=READY
if [ "$create" -eq 1 ] || [ "$queued" -eq 1 ]; then dry_state=NOT_FOUND; fi
tpu_state() {
  local -a cmd
  if [ "$queued" -eq 1 ]; then
    cmd=(gcloud compute tpus queued-resources describe "$name" "${where[@]}" "--format=value(state.state)")
  else
    cmd=(gcloud compute tpus tpu-vm describe "$name" "${where[@]}" "--format=value(state)")
  fi
  if [ "$dry_run" -eq 1 ]; then
    run "${cmd[@]}"
    echo "$dry_state"
    return
  fi
  "${cmd[@]}" 2>/dev/null || echo NOT_FOUND
}

delete_tpu() {
  if [ "$queued" -eq 1 ]; then
    run gcloud compute tpus queued-resources delete "$name" "${where[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$name" "${where[@]}" --quiet
  fi
}

create_tpu() {
  local -a cap=()
  [ -z "$capacity" ] || cap=("$capacity")
  if [ "$queued" -eq 1 ]; then
    local -a gcloud_track=(gcloud)
    [ "$capacity" != "--best-effort" ] || gcloud_track=(gcloud alpha)
    run "${gcloud_track[@]}" compute tpus queued-resources create "$name" --node-id "$name" \
      "${where[@]}" --accelerator-type "$accel" --runtime-version "$version" "${cap[@]}"
  else
    run gcloud compute tpus tpu-vm create "$name" "${where[@]}" --accelerator-type "$accel" \
      --version "$version" "${cap[@]}"
  fi
  if [ "$queued" -eq 1 ]; then dry_state=ACTIVE; else dry_state=READY; fi
}

# Makes the TPU exist and be ready: creates it if missing, recreates it if preempted (with
# --create / --queued), waits while it is being created or queued.
ensure_ready() {
  local state
  while true; do
    state="$(tpu_state)"
    case "$state" in
      READY | ACTIVE) return 0 ;;
      NOT_FOUND | PREEMPTED | TERMINATED | SUSPENDED | FAILED)
        if [ "$create" -eq 0 ] && [ "$queued" -eq 0 ]; then
          echo "tpu_vm.sh: TPU $name is $state; pass --create (or --queued) with" \
            "--accelerator-type to let this script create it" >&2
          exit 1
        fi
        [ "$state" = "NOT_FOUND" ] || delete_tpu
        create_tpu ;;
      STOPPED) run gcloud compute tpus tpu-vm start "$name" "${where[@]}" ;;
      *)
        if [ "$dry_run" -eq 1 ]; then
          echo "sleep $poll  # until the state is READY"
        else
          echo "[tpu_vm] $name is $state; checking again in ${poll}s" >&2
          sleep "$poll"
        fi ;;
    esac
  done
}

workers() {
  if [ -n "$num_workers" ]; then echo "$num_workers"; return; fi
  if [ "$dry_run" -eq 1 ]; then echo 1; return; fi
  local ips
  ips="$(gcloud compute tpus tpu-vm describe "$name" "${where[@]}" \
    "--format=value(networkEndpoints[].ipAddress)")"
  local n
  n="$(echo "$ips" | tr ';' '\n' | grep -c . || true)"
  if [ "${n:-0}" -gt 0 ]; then echo "$n"; else echo 1; fi
}

# The script every worker runs (argument: the attempt number); shipped next to the tarball.
write_run_script() {
  local overrides=""
  [ "$#" -eq 0 ] || overrides="$(printf ' %q' "$@")"
  local mount=""
  if [ -n "$bucket" ]; then
    mount="if ! mountpoint -q $(printf '%q' "$mount_point"); then
  if ! command -v gcsfuse > /dev/null; then
    curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg \\
      | sudo gpg --batch --yes --dearmor -o /usr/share/keyrings/cloud.google.gpg
    echo \"deb [signed-by=/usr/share/keyrings/cloud.google.gpg] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) main\" \\
      | sudo tee /etc/apt/sources.list.d/gcsfuse.list > /dev/null
    sudo apt-get update -q && sudo apt-get install -y -q gcsfuse
  fi
  sudo mkdir -p $(printf '%q' "$mount_point") && sudo chown \"\$USER\" $(printf '%q' "$mount_point")
  # orbax renames each finished checkpoint directory: allow directory renames.
  gcsfuse --implicit-dirs --rename-dir-limit=1000000 $(printf '%q' "$bucket") $(printf '%q' "$mount_point")
fi"
  fi
  cat <<EOF
#!/usr/bin/env bash
# Runs on every worker: unpack commit $commit, install, run. Argument: the attempt number.
set -euo pipefail
attempt="\${1:-0}"
cd "\$HOME"
mkdir -p rlhf_jax_logs
[ -d $src ] || tar -xzf $src.tar.gz
cd $src
$mount
export VENV="\$HOME/rlhf_jax_venv"
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  # The TPU images' python3 is older than the project's 3.11: a standalone one through uv.
  command -v uv > /dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh
  export PATH="\$HOME/.local/bin:\$PATH"
  [ -x "\$VENV/bin/python" ] || uv venv --seed --python 3.11 "\$VENV"
fi
source launchers/setup_env.sh base
jax_version="\$(python -c 'import jax; print(jax.__version__)')"
[ -f "\$VENV/.jax_tpu_\$jax_version" ] || {
  pip install -q "jax[tpu]==\$jax_version" && touch "\$VENV/.jax_tpu_\$jax_version"; }
python -m rlhf_jax.main --config $(printf '%q' "$config") --workdir $(printf '%q' "$workdir") \\
  --config.distributed.auto=True$overrides 2>&1 | tee -a "\$HOME/rlhf_jax_logs/attempt-\$attempt.log"
EOF
}

# --- ship the commit ---------------------------------------------------------------------------
if [ "$dry_run" -eq 1 ]; then
  echo "# run script $run_script:"
  write_run_script "$@" | sed 's/^/#   /'
else
  write_run_script "$@" > "$run_script"
  mkdir -p "$log_dir"
fi
run git -C "$root" archive --format=tar.gz --prefix="$src/" -o "$tarball" "$commit"

attempt=0
while true; do
  ensure_ready
  n_workers="$(workers)"
  run gcloud compute tpus tpu-vm scp "$tarball" "$run_script" "$name:" --worker=all "${where[@]}"
  attempt_dir="$log_dir/attempt-$attempt"
  [ "$dry_run" -eq 1 ] || mkdir -p "$attempt_dir"
  status=0
  if [ "$dry_run" -eq 1 ]; then
    run gcloud compute tpus tpu-vm ssh "$name" --worker=all "${where[@]}" \
      --command "bash $src.run.sh $attempt"
    echo "# (its output, all workers, is copied to $attempt_dir/ssh.log)"
    if [ "$simulate_preemption" -eq 1 ] && [ "$attempt" -eq 0 ]; then
      status=255
      if [ "$queued" -eq 1 ]; then dry_state=SUSPENDED; else dry_state=PREEMPTED; fi
    fi
  else
    gcloud compute tpus tpu-vm ssh "$name" --worker=all "${where[@]}" \
      --command "bash $src.run.sh $attempt" 2>&1 | tee "$attempt_dir/ssh.log" || status=$?
  fi
  # Each worker's own log (best effort: a preempted worker's disk may be gone).
  for ((w = 0; w < n_workers; w++)); do
    run gcloud compute tpus tpu-vm scp "$name:rlhf_jax_logs/attempt-$attempt.log" \
      "$attempt_dir/worker-$w.log" "--worker=$w" "${where[@]}" 2>/dev/null \
      || echo "[tpu_vm] no log from worker $w (attempt $attempt)" >&2
  done
  if [ "$status" -eq 0 ]; then
    echo "[tpu_vm] run completed (attempt $attempt); logs in $log_dir" >&2
    [ "$delete_when_done" -eq 0 ] || delete_tpu
    exit 0
  fi
  state="$(tpu_state)"
  case "$state" in
    READY | ACTIVE)
      if [ "$status" -ne 75 ] && [ "$status" -ne 255 ]; then
        echo "[tpu_vm] the run failed with status $status (TPU $state); see $attempt_dir" >&2
        exit "$status"
      fi ;;
  esac
  attempt=$((attempt + 1))
  if [ "$attempt" -gt "$max_restarts" ]; then
    echo "[tpu_vm] stopped after $max_restarts restarts (TPU $state, status $status)" >&2
    exit 75
  fi
  echo "[tpu_vm] attempt $((attempt - 1)) ended with status $status, TPU $state:" \
    "relaunching (attempt $attempt), resuming from $workdir" >&2
done
