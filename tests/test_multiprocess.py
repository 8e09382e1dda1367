"""The trainers across processes: 2 processes × 4 CPU devices equal 1 process × 8 devices
(reward-model epoch, PPO and GRPO iterations on two meshes), a killed peer ends the others
with an error naming it, and SIGTERM to one process checkpoints and stops all of them.

Each run starts fresh interpreters (tests/mp_worker.py) and compiles every trainer, so these
tests are slow; CI runs them (``.ci/run``: ``-m multiprocess``).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from rlhf_jax.train.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "mp_worker.py")
EXIT_PREEMPTED = 75


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(**extra) -> dict:
  env = {
    k: v
    for k, v in os.environ.items()
    if not k.startswith(("XLA_", "JAX_", "SLURM_", "OMPI_", "TPU_", "RLHF_JAX_"))
  }
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  env.update(extra)
  return env


def _start(out, mode, nproc, port=None, **env):
  """``nproc`` worker processes (8 devices in all) writing to ``out``; their logs go to
  ``out/log<i>``."""
  os.makedirs(out, exist_ok=True)
  port = port or _free_port()
  procs = []
  for i in range(nproc):
    log = open(os.path.join(out, f"log{i}"), "w")
    args = [WORKER, str(out), str(nproc), str(i), str(port), str(8 // nproc), mode]
    procs.append(
      subprocess.Popen(
        [sys.executable, *args], env=_env(**env), stdout=log, stderr=subprocess.STDOUT
      )
    )
  return procs


def _wait(procs, timeout):
  deadline = time.monotonic() + timeout
  try:
    for p in procs:
      p.wait(timeout=max(1.0, deadline - time.monotonic()))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  return [p.returncode for p in procs]


def _log(out, i) -> str:
  with open(os.path.join(out, f"log{i}")) as f:
    return f.read()


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("mode", ["data_fsdp", "fsdp_tensor"])
def test_two_processes_equal_one_process(tmp_path, mode):
  """Params and metrics of a reward-model epoch, a PPO iteration (separate critic) and a
  GRPO iteration agree between 2 processes × 4 devices and 1 process × 8 devices.

  Not bitwise: the same program is compiled for a different device topology, and the
  cross-process all-reduces (gloo) sum the partial results in another order than the
  in-process ones, so float32 sums differ in the last bits (~1e-7 relative per reduction,
  amplified a little by Adam's division by sqrt(v) over a few updates). The sampled tokens
  must be the same (a flipped sample would change the metrics by far more than the
  tolerance).
  """
  one, two = tmp_path / "one", tmp_path / "two"
  procs = _start(one, mode, 1) + _start(two, mode, 2)
  codes = _wait(procs, timeout=1500)
  for i, (code, out, k) in enumerate(zip(codes, (one, two, two), (0, 0, 1))):
    assert code == 0, f"run {i} failed:\n{_log(out, k)[-4000:]}"
  a, b = np.load(one / "result.npz"), np.load(two / "result.npz")
  assert sorted(a.files) == sorted(b.files)
  assert {f.split("/")[0].rstrip("[") for f in a.files} >= {
    "rm_metric",
    "ppo_metric",
    "grpo_metric",
  }
  for key in a.files:
    np.testing.assert_allclose(b[key], a[key], rtol=1e-4, atol=1e-5, err_msg=key)
  # Both processes wrote one metrics file each run, from process 0 only: no duplicated rows.
  for name in ("ppo", "grpo"):
    rows = [json.loads(line) for line in open(two / name / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1], rows


@pytest.mark.slow
@pytest.mark.multiprocess
def test_killed_peer_ends_the_others_with_an_error_naming_it(tmp_path):
  """SIGKILL of process 1 in the middle of the PPO loop: process 0 exits non-zero within
  60 s (heartbeat timeout 10 s), and its output names the dead process (task 1)."""
  procs = _start(tmp_path, "ppo_loop", 2, MP_HEARTBEAT="10")
  metrics = tmp_path / "ppo_loop" / "metrics.jsonl"
  try:
    deadline = time.monotonic() + 600
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
      assert time.monotonic() < deadline, _log(tmp_path, 0)[-4000:]
      assert all(p.poll() is None for p in procs), _log(tmp_path, 0)[-4000:]
      time.sleep(0.2)
    procs[1].send_signal(signal.SIGKILL)
    t0 = time.monotonic()
    code = _wait(procs[:1], timeout=90)[0]
    elapsed = time.monotonic() - t0
  finally:
    _wait(procs, timeout=1)
  log = _log(tmp_path, 0)
  assert code != 0, log[-4000:]
  assert elapsed < 60, (elapsed, log[-4000:])
  # The coordination service's verdict, which it sends to every process before ending it.
  assert "Task 1 heartbeat timeout" in log, log[-4000:]
  print(f"process 0 ended {elapsed:.1f} s after process 1 was killed")


@pytest.mark.slow
@pytest.mark.multiprocess
def test_sigterm_to_one_process_checkpoints_and_stops_all(tmp_path):
  """SIGTERM to process 1 only: both processes agree to stop at the same iteration, save
  that checkpoint and exit with the preemption code; the checkpoint is committed."""
  procs = _start(tmp_path, "ppo_loop", 2)
  metrics = tmp_path / "ppo_loop" / "metrics.jsonl"
  try:
    deadline = time.monotonic() + 600
    while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
      assert time.monotonic() < deadline, _log(tmp_path, 0)[-4000:]
      assert all(p.poll() is None for p in procs), _log(tmp_path, 0)[-4000:]
      time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)
    codes = _wait(procs, timeout=300)
  finally:
    _wait(procs, timeout=1)
  logs = [_log(tmp_path, i) for i in range(2)]
  assert codes == [EXIT_PREEMPTED] * 2, (codes, logs[0][-3000:], logs[1][-3000:])
  stops = [[line for line in log.splitlines() if line.startswith("PREEMPTED")] for log in logs]
  assert all(len(s) == 1 for s in stops), stops
  assert stops[0] == stops[1]  # the same iteration in both
  done = int(stops[0][0].split(" at iteration ")[1].split()[0])
  ckpt = tmp_path / "ppo_loop" / "checkpoints"
  steps = sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
  assert steps and steps[-1] == done, (steps, done)
  assert not [p for p in ckpt.iterdir() if "tmp" in p.name]  # committed, nothing half-written


@pytest.mark.slow
@pytest.mark.multiprocess
def test_ppo_killed_and_restarted_ten_times_equals_an_uninterrupted_run(tmp_path):
  """PPO (1 process × 8 devices, a checkpoint every iteration, saved asynchronously) is
  stopped at 10 seeded random points — SIGKILL and SIGTERM alternating, the SIGKILLs at a
  random iteration or the moment an asynchronous save is under way (its temporary directory
  exists) — and restarted each time; the final params equal those of an uninterrupted run.

  Bitwise: a restart restores the exact bits of the last committed state (the RNG is folded
  with the iteration, the prompts of iteration k are a function of (seed, k)), and the same
  program on the same device topology is deterministic on CPU, so any difference is a bug
  (a lost or half-written checkpoint, a replayed or skipped iteration), not rounding.
  """
  iterations = 24  # > 10 stops × at most 2 iterations each: every start has one to run
  cache = str(tmp_path / "xla_cache")  # restarts load the compiled programs, not recompile
  env = dict(
    MP_ITERATIONS=str(iterations),
    JAX_COMPILATION_CACHE_DIR=cache,
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
  )
  ref, run = tmp_path / "ref", tmp_path / "run"
  assert _wait(_start(ref, "ppo_loop", 1, **env), timeout=900) == [0], _log(ref, 0)[-4000:]
  rng = np.random.default_rng(0)
  metrics, ckpt = run / "ppo_loop" / "metrics.jsonl", run / "ppo_loop" / "checkpoints"
  kinds = []

  def last_logged() -> int:
    """The highest iteration in the metrics file (lines of lost iterations are re-logged)."""
    steps = [0]
    for line in metrics.read_text().splitlines() if metrics.exists() else []:
      try:
        steps.append(json.loads(line)["step"])
      except ValueError:  # a line being written
        pass
    return max(steps)

  def in_flight_save(since: float) -> bool:
    """Whether a save of this start is being written (its temporary directory exists; an
    earlier start's leftover does not count)."""
    try:
      return any("tmp" in p.name and p.stat().st_mtime >= since for p in ckpt.iterdir())
    except FileNotFoundError:  # no directory yet, or renamed while we looked
      return False

  for k in range(10):
    sig = signal.SIGKILL if k % 2 == 0 else signal.SIGTERM
    during_save = k % 4 == 0
    # Stop once this start has logged iteration `target`, beyond any logged before (so the
    # SIGTERM guard is installed), 1 or 2 iterations on.
    target = last_logged() + int(rng.integers(1, 3))
    assert target < iterations
    started = time.time()
    (proc,) = _start(run, "ppo_loop", 1, **env)
    sent = False
    try:
      deadline = time.monotonic() + 600
      while proc.poll() is None and time.monotonic() < deadline:
        rows = last_logged()
        saving = in_flight_save(started)
        # A save caught in the act, or (should the polling miss them) two iterations later.
        if rows >= target and (saving or not during_save or rows >= target + 2):
          proc.send_signal(sig)
          kinds.append((sig.name, rows, saving))
          sent = True
          break
        time.sleep(0.02)
      code = _wait([proc], timeout=300)[0]
    finally:
      _wait([proc], timeout=1)
    expected = (-signal.SIGKILL if sig == signal.SIGKILL else EXIT_PREEMPTED) if sent else 0
    assert code == expected, (kinds, code, _log(run, 0)[-4000:])
  assert len(kinds) >= 8, kinds  # nearly every start was stopped (not run to the end)
  assert any(saving for name, _, saving in kinds if name == "SIGKILL"), kinds
  if not (run / "final.npz").exists():
    assert _wait(_start(run, "ppo_loop", 1, **env), timeout=900) == [0], _log(run, 0)[-4000:]
  a, b = np.load(ref / "final.npz"), np.load(run / "final.npz")
  assert sorted(a.files) == sorted(b.files)
  for key in a.files:
    np.testing.assert_array_equal(b[key], a[key], err_msg=f"{key} after {kinds}")
  # The metrics file holds each iteration once (rows of lost iterations replaced), and
  # the last iteration's metrics are the uninterrupted run's.
  got = read_metrics(str(metrics), last_per_step=True)
  want = read_metrics(str(ref / "ppo_loop" / "metrics.jsonl"), last_per_step=True)
  assert [r["step"] for r in got] == list(range(1, iterations + 1))
  for key in ("loss", "kl", "score", "entropy"):
    assert got[-1][key] == want[-1][key], key
  print("stops:", kinds)
