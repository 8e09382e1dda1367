"""jax.distributed start-up with two real processes on 127.0.0.1, per-process slices/seeds."""

import os
import socket
import subprocess
import sys
import textwrap

import pytest

from rlhf_jax import distributed

_WORKER = textwrap.dedent("""
    import os, signal, sys
    import jax
    jax.config.update("jax_num_cpu_devices", 2)       # before the backend starts
    import jax.numpy as jnp
    import numpy as np
    from rlhf_jax import checkpoint, distributed, sharding

    pid, port, ckpt_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    assert distributed.maybe_initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid,
                                        initialization_timeout=30)
    assert not distributed.maybe_initialize(f"127.0.0.1:{port}", num_processes=2,
                                            process_id=pid)   # already initialised: no-op
    assert (jax.process_count(), jax.device_count(), jax.local_device_count()) == (2, 4, 2)

    mesh = sharding.make_mesh(data=4, fsdp=1, tensor=1)
    data = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)       # the global batch
    local = data[distributed.process_slice(8, pid, 2)]              # this process's rows
    batch = jax.make_array_from_process_local_data(sharding.batch_sharding(mesh, 2), local)
    assert batch.shape == (8, 3)
    total = jax.jit(lambda x: jnp.sum(x * 2.0), out_shardings=sharding.replicated(mesh))(batch)
    print("TOTAL", float(total), flush=True)
    # The same global batch from rows every process holds; and back to the host in full.
    glob = sharding.shard_global_batch(data, mesh)
    equal = jax.jit(lambda a, b: jnp.all(a == b), out_shardings=sharding.replicated(mesh))(
        glob, batch)
    print("GLOBAL", bool(equal), np.array_equal(sharding.to_host(glob * 2.0), data * 2.0),
          flush=True)

    # Checkpoint a globally sharded array from both processes and restore it.
    mgr = checkpoint.open_manager(ckpt_dir)
    checkpoint.save(mgr, 1, {"batch": batch}, extra={"pid_ignored": 0}, wait=True)
    restored, _ = checkpoint.restore(mgr, checkpoint.abstract_like({"batch": batch}))
    mgr.close()
    same = jax.jit(lambda a, b: jnp.all(a == b), out_shardings=sharding.replicated(mesh))(
        restored["batch"], batch)
    print("RESTORED", bool(same), flush=True)

    # Once, on process 0: its result reaches both processes, its exception is raised in both,
    # and a from_lead nested in a lead_only runs directly on process 0 (the other never sees it).
    calls = []
    got = distributed.from_lead(lambda: calls.append(1) or {"pid": pid, "s": "x" * 3000}, "obj")
    print("LEAD", got["pid"], len(got["s"]), len(calls), flush=True)
    def fail():
      raise ValueError("config.x: bad")
    try:
      distributed.lead_only(fail, "fail")
    except ValueError as e:
      print("RAISED", str(e).replace(" ", "_"), flush=True)
    distributed.lead_only(
      lambda: print("NESTED", distributed.from_lead(lambda: 7, "inner"), flush=True), "outer")

    # Only process 1 is "preempted"; should_stop() agrees across processes.
    with checkpoint.PreemptionGuard() as guard:
      before = guard.should_stop()
      if pid == 1:
        os.kill(os.getpid(), signal.SIGTERM)
      after = guard.should_stop()
    print("STOP", before, after, guard.stop_requested, flush=True)
    print("SEED", distributed.per_process_seed(0), flush=True)
""")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.multiprocess
def test_two_processes_global_mesh_sum_checkpoint_and_preemption(tmp_path):
  script = tmp_path / "worker.py"
  script.write_text(_WORKER)
  env = {
    k: v
    for k, v in os.environ.items()
    if not k.startswith(("XLA_", "JAX_", "SLURM_", "OMPI_", "TPU_", "RLHF_JAX_"))
  }
  env["JAX_PLATFORMS"] = "cpu"
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
  port = str(_free_port())
  procs = [
    subprocess.Popen(
      [sys.executable, str(script), str(i), port, str(tmp_path / "ckpt")],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  outputs = []
  try:
    for p in procs:
      out, _ = p.communicate(timeout=90)
      outputs.append(out)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  for i, (p, out) in enumerate(zip(procs, outputs)):
    assert p.returncode == 0, f"process {i} failed:\n{out[-4000:]}"

  def lines(out, tag):
    return [l.split()[1:] for l in out.splitlines() if l.startswith(tag + " ")]

  expected = 2.0 * sum(range(24))
  for out in outputs:
    assert lines(out, "TOTAL") == [[str(expected)]]
    assert lines(out, "RESTORED") == [["True"]]
    assert lines(out, "GLOBAL") == [["True", "True"]]
  assert lines(outputs[0], "LEAD") == [["0", "3000", "1"]]  # called on process 0 only
  assert lines(outputs[1], "LEAD") == [["0", "3000", "0"]]
  for out in outputs:
    assert lines(out, "RAISED") == [["config.x:_bad"]]
  assert lines(outputs[0], "NESTED") == [["7"]] and lines(outputs[1], "NESTED") == []
  assert lines(outputs[0], "STOP") == [["False", "True", "False"]]
  assert lines(outputs[1], "STOP") == [["False", "True", "True"]]
  seeds = [lines(out, "SEED")[0][0] for out in outputs]
  assert seeds[0] != seeds[1]
  assert seeds == [str(distributed.per_process_seed(0, i)) for i in range(2)]


def test_process_slice_covers_items_once():
  for n, count in [(8, 2), (10, 3), (2, 4), (0, 3)]:
    slices = [distributed.process_slice(n, i, count) for i in range(count)]
    covered = [j for s in slices for j in range(n)[s]]
    assert covered == list(range(n))
    sizes = [s.stop - s.start for s in slices]
    assert max(sizes) - min(sizes) <= 1
  assert distributed.process_slice(8, 1, 2) == slice(4, 8)
  assert distributed.process_slice(8) == slice(0, 8)  # single process: everything
  with pytest.raises(ValueError, match="process_index=2"):
    distributed.process_slice(8, 2, 2)


def test_per_process_seed_deterministic_and_distinct():
  seeds = [distributed.per_process_seed(7, i) for i in range(64)]
  assert len(set(seeds)) == 64
  assert seeds == [distributed.per_process_seed(7, i) for i in range(64)]
  assert distributed.per_process_seed(8, 0) != seeds[0]
  assert all(0 <= s < 2**31 for s in seeds)


def test_maybe_initialize_noop_without_cluster(monkeypatch):
  for var in list(os.environ):
    if var.startswith(("SLURM_", "OMPI_", "TPU_", "JAX_COORDINATOR", "RLHF_JAX_")):
      monkeypatch.delenv(var)
  assert distributed.cluster_detected() is None
  assert distributed.maybe_initialize() is False
  assert distributed.maybe_initialize(num_processes=1) is False
  monkeypatch.setenv("SLURM_JOB_ID", "1")
  for var in ("SLURM_STEP_NODELIST", "SLURM_PROCID", "SLURM_LOCALID"):
    monkeypatch.setenv(var, "0")
  monkeypatch.setenv("SLURM_NTASKS", "1")
  assert distributed.cluster_detected() is None  # a one-task SLURM job
  monkeypatch.setenv("SLURM_NTASKS", "4")
  assert distributed.cluster_detected() == "slurm"
  monkeypatch.setenv("RLHF_JAX_DISTRIBUTED", "0")
  assert distributed.cluster_detected() is None
  with pytest.raises(ValueError, match="process_id=3"):
    distributed.maybe_initialize("127.0.0.1:1", num_processes=2, process_id=3)


def test_lead_only_and_from_lead_single_process():
  """One process is the lead: the function runs once, its result and exceptions as they are."""
  calls = []
  assert distributed.is_lead()
  assert distributed.from_lead(lambda: calls.append("a") or [1, 2], "a") == [1, 2]
  assert distributed.lead_only(lambda: calls.append("b") or 3, "b") is None
  with pytest.raises(KeyError, match="boom"):
    distributed.lead_only(lambda: {}["boom"], "c")
  assert calls == ["a", "b"]
