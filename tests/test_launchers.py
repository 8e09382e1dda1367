"""Launchers: the commands their --dry-run prints, usage errors, shellcheck, and real runs of the
local multi-process launcher (jax.distributed over 127.0.0.1) and of the SLURM script's
signal -> requeue path (with stand-ins for srun and scontrol)."""

import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHERS = os.path.join(ROOT, "launchers")


def _clean_env(**extra) -> dict:
  env = {
    k: v
    for k, v in os.environ.items()
    if not k.startswith(("XLA_", "JAX_", "SLURM_", "OMPI_", "TPU_", "RLHF_JAX_"))
  }
  env.update(extra)
  return env


def _run(args, env=None, timeout=60):
  return subprocess.run(
    ["bash", *args], capture_output=True, text=True, env=env or _clean_env(), timeout=timeout
  )


def _lines(out: str) -> list:
  return [line for line in out.splitlines() if line and not line.startswith("#")]


def _head_commit() -> str:
  try:
    return subprocess.run(
      ["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    pytest.skip("not a git checkout: tpu_vm.sh ships a commit")


# ------------------------------------------------------------------------------ multiprocess.sh
def test_multiprocess_dry_run_one_command_per_process():
  mp = os.path.join(LAUNCHERS, "multiprocess.sh")
  r = _run(
    [mp, "--dry-run", "--port", "4321", "--cpu-devices", "2", "--log-dir", "/tmp/mp-logs"]
    + ["3", "configs/sentiment.py", "runs/x", "--config.ppo.hparams.kl_target=3"]
  )
  assert r.returncode == 0, r.stderr
  lines = _lines(r.stdout)
  assert lines[0] == f"source {LAUNCHERS}/setup_env.sh base"
  procs = [shlex.split(line) for line in lines if line.startswith("env ")]
  assert len(procs) == 3 and lines[-1].startswith("wait")
  for i, words in enumerate(procs):
    env = dict(w.split("=", 1) for w in words[1:] if "=" in w and not w.startswith("-"))
    assert env["RLHF_JAX_COORDINATOR_ADDRESS"] == "127.0.0.1:4321"
    assert env["RLHF_JAX_NUM_PROCESSES"] == "3"
    assert env["RLHF_JAX_PROCESS_ID"] == str(i)
    assert env["JAX_PLATFORMS"] == "cpu" and env["JAX_NUM_CPU_DEVICES"] == "2"
    cmd = words[words.index("python") :]
    assert cmd[:7] == [
      "python",
      "-m",
      "rlhf_jax.main",
      "--config",
      "configs/sentiment.py",
      "--workdir",
      "runs/x",
    ]
    assert cmd[7] == "--config.ppo.hparams.kl_target=3"
    assert cmd[-4:] == [">", f"/tmp/mp-logs/process-{i}.log", "2>&1", "&"]


def test_multiprocess_dry_run_gpus_and_any_command():
  mp = os.path.join(LAUNCHERS, "multiprocess.sh")
  r = _run([mp, "--dry-run", "--gpus-per-process", "2", "2", "--", "python3", "x.py", "--a=1"])
  assert r.returncode == 0, r.stderr
  procs = [shlex.split(line) for line in _lines(r.stdout) if line.startswith("env ")]
  assert [p for p in procs[0] if p.startswith("JAX_LOCAL_DEVICE_IDS=")] == [
    "JAX_LOCAL_DEVICE_IDS=0,1"
  ]
  assert [p for p in procs[1] if p.startswith("JAX_LOCAL_DEVICE_IDS=")] == [
    "JAX_LOCAL_DEVICE_IDS=2,3"
  ]
  assert procs[1][-4:] == ["python3", "x.py", "--a=1", "&"]
  ports = {p.split(":")[-1] for words in procs for p in words if p.startswith("RLHF_JAX_COORD")}
  assert len(ports) == 1 and ports.pop().isdigit()  # one free port, shared


@pytest.mark.parametrize(
  "args, message",
  [
    ([], "missing N"),
    (["0"], "N must be >= 1"),
    (["two"], "N expects a non-negative integer"),
    (["--bogus", "2"], "unknown option '--bogus'"),
    (["--port"], "--port needs a value"),
    (["--port=5", "2"], "write options as '--name value'"),
    (["2", "--"], "nothing to run after '--'"),
  ],
)
def test_multiprocess_usage_errors(args, message):
  r = _run([os.path.join(LAUNCHERS, "multiprocess.sh"), *args])
  assert r.returncode == 2
  assert message in r.stderr


_PSUM_WORKER = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from rlhf_jax import distributed, sharding
    assert distributed.maybe_initialize(initialization_timeout=30)  # from RLHF_JAX_* only
    pid = jax.process_index()
    mesh = sharding.make_mesh(data=jax.device_count(), fsdp=1, tensor=1)
    local = np.full((jax.local_device_count(), 1), pid + 1, np.float32)
    x = jax.make_array_from_process_local_data(sharding.batch_sharding(mesh, 2), local)
    total = jax.jit(jnp.sum, out_shardings=sharding.replicated(mesh))(x)
    print("RESULT", pid, jax.process_count(), jax.device_count(), float(total), flush=True)
""")


@pytest.mark.multiprocess
def test_multiprocess_two_processes_global_sum(tmp_path):
  script = tmp_path / "worker.py"
  script.write_text(_PSUM_WORKER)
  logs = tmp_path / "logs"
  env = _clean_env(PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  r = _run(
    [os.path.join(LAUNCHERS, "multiprocess.sh"), "--cpu-devices", "2", "--log-dir", str(logs)]
    + ["2", "--", sys.executable, str(script)],
    env=env,
    timeout=120,
  )
  outs = [(logs / f"process-{i}.log").read_text() for i in range(2)]
  assert r.returncode == 0, r.stderr + "\n".join(o[-2000:] for o in outs)
  for i, out in enumerate(outs):
    results = [line.split()[1:] for line in out.splitlines() if line.startswith("RESULT ")]
    # Each process contributes (its index + 1) on each of its 2 devices: 2*1 + 2*2.
    assert results == [[str(i), "2", "4", "6.0"]]


def test_multiprocess_one_failure_stops_the_others():
  # Process 1 fails; the others ignore SIGTERM, so they are killed after --grace seconds.
  body = 'if [ "$RLHF_JAX_PROCESS_ID" = 1 ]; then exit 3; fi; trap "" TERM; sleep 60'
  t0 = time.monotonic()
  r = _run(
    [os.path.join(LAUNCHERS, "multiprocess.sh"), "--grace", "1", "3", "--", "bash", "-c", body],
    timeout=30,
  )
  assert r.returncode == 3
  assert "exited with status 3: stopping the others" in r.stderr
  assert time.monotonic() - t0 < 15


# -------------------------------------------------------------------------------- tpu_vm.sh
def _tpu(*args):
  return _run([os.path.join(LAUNCHERS, "tpu_vm.sh"), "--dry-run", *args])


def test_tpu_vm_dry_run_create_spot_preempt_and_resume():
  commit = _head_commit()
  r = _tpu(
    "--name",
    "t1",
    "--zone",
    "us-central2-b",
    "--create",
    "--spot",
    "--accelerator-type",
    "v4-16",
    "--num-workers",
    "2",
    "--log-dir",
    "/tmp/tpu-logs",
    "--simulate-preemption",
    "configs/sentiment.py",
    "/mnt/shared/runs/s",
    "--config.mesh.fsdp=-1",
  )
  assert r.returncode == 0, r.stderr
  cmds = [shlex.split(line) for line in _lines(r.stdout)]
  tarball = f"/tmp/rlhf_jax-{commit}.tar.gz"
  archive = [c for c in cmds if c[:1] == ["git"]]
  assert archive == [
    ["git", "-C", ROOT, "archive", "--format=tar.gz", f"--prefix=rlhf_jax-{commit}/"]
    + ["-o", tarball, commit]
  ]
  where = ["--zone", "us-central2-b"]
  create = ["gcloud", "compute", "tpus", "tpu-vm", "create", "t1", *where]
  create += ["--accelerator-type", "v4-16", "--version", "tpu-ubuntu2204-base", "--spot"]
  ship = ["gcloud", "compute", "tpus", "tpu-vm", "scp", tarball, f"/tmp/rlhf_jax-{commit}.run.sh"]
  ship += ["t1:", "--worker=all", *where]

  def ssh(attempt):
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "t1", "--worker=all", *where] + [
      "--command",
      f"bash rlhf_jax-{commit}.run.sh {attempt}",
    ]

  def fetch(attempt, w):
    return ["gcloud", "compute", "tpus", "tpu-vm", "scp"] + [
      f"t1:rlhf_jax_logs/attempt-{attempt}.log",
      f"/tmp/tpu-logs/attempt-{attempt}/worker-{w}.log",
      f"--worker={w}",
      *where,
    ]

  describe = ["gcloud", "compute", "tpus", "tpu-vm", "describe", "t1", *where]
  describe += ["--format=value(state)"]
  delete = ["gcloud", "compute", "tpus", "tpu-vm", "delete", "t1", *where, "--quiet"]
  # Create (none yet), wait for READY, ship, run, fetch both workers' logs; the TPU is then
  # found PREEMPTED: delete, recreate, ship again, run attempt 1 (it resumes), fetch.
  assert cmds[1:] == [
    describe,
    create,
    describe,
    ship,
    ssh(0),
    fetch(0, 0),
    fetch(0, 1),
    describe,
    describe,
    delete,
    create,
    describe,
    ship,
    ssh(1),
    fetch(1, 0),
    fetch(1, 1),
  ]
  assert "PREEMPTED: relaunching (attempt 1)" in r.stderr
  script = "\n".join(line[4:] for line in r.stdout.splitlines() if line.startswith("#   "))
  assert f"tar -xzf rlhf_jax-{commit}.tar.gz" in script
  assert "--workdir /mnt/shared/runs/s" in script
  assert "--config.distributed.auto=True --config.mesh.fsdp=-1" in script
  assert 'tee -a "$HOME/rlhf_jax_logs/attempt-$attempt.log"' in script


def test_tpu_vm_dry_run_queued_best_effort_and_bucket():
  r = _tpu(
    "--name",
    "q1",
    "--zone",
    "us-west4-a",
    "--project",
    "p1",
    "--queued",
    "--best-effort",
    "--accelerator-type",
    "v5litepod-16",
    "--mount-bucket",
    "gs://bkt",
    "--simulate-preemption",
    "configs/sentiment.py",
    "/mnt/rlhf_jax/runs/s",
  )
  assert r.returncode == 0, r.stderr
  cmds = [shlex.split(line) for line in _lines(r.stdout)]
  where = ["--zone", "us-west4-a", "--project", "p1"]
  create = ["gcloud", "alpha", "compute", "tpus", "queued-resources", "create", "q1"]
  create += ["--node-id", "q1", *where, "--accelerator-type", "v5litepod-16"]
  create += ["--runtime-version", "tpu-ubuntu2204-base", "--best-effort"]
  assert cmds.count(create) == 2  # created, and recreated after the preemption
  describe = ["gcloud", "compute", "tpus", "queued-resources", "describe", "q1", *where]
  assert describe + ["--format=value(state.state)"] in cmds
  delete = ["gcloud", "compute", "tpus", "queued-resources", "delete", "q1", *where]
  assert cmds.index(delete + ["--force", "--quiet"]) < len(cmds) - cmds[::-1].index(create) - 1
  assert "SUSPENDED: relaunching (attempt 1)" in r.stderr
  assert "gcsfuse --implicit-dirs --rename-dir-limit=1000000 bkt /mnt/rlhf_jax" in r.stdout


@pytest.mark.parametrize(
  "args, message",
  [
    (["--zone", "z", "c.py", "w"], "--name is required"),
    (["--name", "n", "c.py", "w"], "--zone is required"),
    (["--name", "n", "--zone", "z", "c.py"], "expected CONFIG[:ARG] WORKDIR"),
    (["--name", "n", "--zone", "z", "--create", "c.py", "w"], "need --accelerator-type"),
    (["--name", "n", "--zone", "z", "--best-effort", "c.py", "w"], "--best-effort needs --queued"),
    (["--name", "n", "--zone", "z", "--spot", "--reserved", "c.py", "w"], "choose one of"),
    (["--name", "n", "--zone", "z", "c.py", "gs://b/run"], "use a mounted path"),
    (["--name", "n", "--zone", "z", "c.py", "w", "extra"], "only --config.field=value"),
    (["--name", "n", "--zone", "z", "--commit", "no-such-rev", "c.py", "w"], "not a commit"),
    (["--name", "n", "--zone", "z", "--max-restarts", "x", "c.py", "w"], "non-negative integer"),
  ],
)
def test_tpu_vm_usage_errors(args, message):
  r = _tpu(*args)
  assert r.returncode == 2, r.stdout
  assert message in r.stderr


# --------------------------------------------------------------------------- slurm_gpu.sbatch
SBATCH = os.path.join(LAUNCHERS, "slurm_gpu.sbatch")


def test_slurm_directives():
  text = open(SBATCH, encoding="utf-8").read()
  for directive in ("--requeue", "--signal=B:USR1@120", "--open-mode=append"):
    assert f"#SBATCH {directive}\n" in text


@pytest.mark.parametrize("tasks_per_node, local_ids", [("1(x2)", "0,1,2,3"), ("4(x2)", None)])
def test_slurm_dry_run(tasks_per_node, local_ids):
  env = _clean_env(SLURM_JOB_ID="42", SLURM_TASKS_PER_NODE=tasks_per_node, SLURM_GPUS_ON_NODE="4")
  r = _run([SBATCH, "--dry-run", "configs/sentiment.py", "runs/x", "--config.mesh.fsdp=-1"], env)
  assert r.returncode == 0, r.stderr
  cmds = [shlex.split(line, comments=True) for line in _lines(r.stdout)]
  exports = [c for c in cmds if c[:1] == ["export"]]
  assert exports == ([["export", f"JAX_LOCAL_DEVICE_IDS={local_ids}"]] if local_ids else [])
  assert ["srun", "--kill-on-bad-exit=1", "python", "-m", "rlhf_jax.main"] + [
    "--config",
    "configs/sentiment.py",
    "--workdir",
    "runs/x",
    "--config.distributed.auto=True",
    "--config.mesh.fsdp=-1",
  ] in cmds
  assert cmds[-1] == ["scontrol", "requeue", "42"]


def test_slurm_refuses_outside_a_job():
  r = _run([SBATCH, "configs/sentiment.py", "runs/x"])
  assert r.returncode == 2 and "not inside a SLURM job" in r.stderr


def test_slurm_usr1_checkpoints_and_requeues(tmp_path):
  # A virtual environment that is already installed (setup_env.sh then installs nothing), with
  # stand-ins for srun (a task that exits 75 on SIGTERM, as rlhf_jax.main does after saving)
  # and scontrol (records its arguments).
  venv = tmp_path / "venv"
  bin_dir = venv / "bin"
  bin_dir.mkdir(parents=True)
  (bin_dir / "python").write_text(f'#!/usr/bin/env bash\nexec {sys.executable} "$@"\n')
  started = tmp_path / "started"
  (bin_dir / "srun").write_text(
    f"#!/usr/bin/env bash\ntrap 'kill $!; exit 75' TERM\ntouch {started}\nsleep 60 & wait\n"
  )
  log = tmp_path / "scontrol.log"
  (bin_dir / "scontrol").write_text(f'#!/usr/bin/env bash\necho "$@" >> {log}\n')
  for f in bin_dir.iterdir():
    f.chmod(0o755)
  import jax

  (venv / ".rlhf_jax_installed_base").touch()
  (venv / f".jax_cuda12_{jax.__version__}").touch()
  env = _clean_env(VENV=str(venv), SLURM_JOB_ID="7", SLURM_SUBMIT_DIR=ROOT, SLURM_GPUS_ON_NODE="0")
  proc = subprocess.Popen(
    ["bash", SBATCH, "configs/sentiment.py", "runs/x"],
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  try:
    deadline = time.monotonic() + 30
    while not started.exists():
      assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
      time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)  # SLURM: 120 s before the time limit
    out, err = proc.communicate(timeout=30)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 75, err
  assert log.read_text().split() == ["requeue", "7"]
  assert "requeueing job 7" in err


# ------------------------------------------------------------------------------- shellcheck
def test_shellcheck_clean():
  scripts = sorted(
    os.path.join(LAUNCHERS, f) for f in os.listdir(LAUNCHERS) if f.endswith((".sh", ".sbatch"))
  )
  assert any(s.endswith("tpu_vm.sh") for s in scripts)
  if shutil.which("shellcheck") is None:
    if os.environ.get("RLHF_JAX_REQUIRE_SHELLCHECK"):
      pytest.fail("shellcheck is not installed (.ci/run installs it: apt-get install shellcheck)")
    pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
  r = subprocess.run(
    ["shellcheck", "-x", "--shell=bash", *scripts], capture_output=True, text=True, cwd=ROOT
  )
  assert r.returncode == 0, r.stdout + r.stderr


# ----------------------------------------------------- the variables multiprocess.sh sets
def test_distributed_reads_launcher_variables(monkeypatch):
  from rlhf_jax import distributed

  for var in list(os.environ):
    if var.startswith(("SLURM_", "OMPI_", "TPU_", "JAX_COORDINATOR", "RLHF_JAX_")):
      monkeypatch.delenv(var)
  monkeypatch.setenv("RLHF_JAX_COORDINATOR_ADDRESS", "127.0.0.1:1234")
  assert distributed.cluster_detected() == "RLHF_JAX_COORDINATOR_ADDRESS"
  monkeypatch.setenv("RLHF_JAX_NUM_PROCESSES", "2")
  monkeypatch.setenv("RLHF_JAX_PROCESS_ID", "5")  # checked before anything connects
  with pytest.raises(ValueError, match=r"process_id=5: must be in \[0, 2\)"):
    distributed.maybe_initialize()
  monkeypatch.setenv("RLHF_JAX_PROCESS_ID", "one")
  with pytest.raises(ValueError, match=r"\$RLHF_JAX_PROCESS_ID='one': expected an integer"):
    distributed.maybe_initialize()
  monkeypatch.setenv("RLHF_JAX_COORDINATOR_ADDRESS", "localhost")
  with pytest.raises(ValueError, match=r"\$RLHF_JAX_COORDINATOR_ADDRESS='localhost'"):
    distributed.maybe_initialize()
  # Explicit arguments win over the variables.
  monkeypatch.setenv("RLHF_JAX_COORDINATOR_ADDRESS", "127.0.0.1:1234")
  monkeypatch.setenv("RLHF_JAX_PROCESS_ID", "0")
  with pytest.raises(ValueError, match=r"process_id=3: must be in \[0, 2\)"):
    distributed.maybe_initialize(process_id=3)


@pytest.mark.parametrize(
  "before, after",
  [
    (None, "glibc.malloc.hugetlb=1"),
    ("glibc.malloc.arena_max=2", "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"),
    ("glibc.malloc.hugetlb=0", "glibc.malloc.hugetlb=0"),  # the user's choice stands
  ],
)
def test_malloc_env_asks_for_huge_pages(before, after):
  env = _clean_env()
  env.pop("GLIBC_TUNABLES", None)
  if before is not None:
    env["GLIBC_TUNABLES"] = before
  script = f'source {shlex.quote(os.path.join(LAUNCHERS, "malloc_env.sh"))}; echo "$GLIBC_TUNABLES"'
  out = _run(["-c", script], env=env)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == after
