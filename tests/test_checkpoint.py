"""Checkpoint save/restore across meshes, typed keys, errors, atomicity, preemption, resume."""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import struct
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from rlhf_jax import checkpoint as ckpt
from rlhf_jax.sharding import make_mesh


@pytest.fixture(autouse=True)
def _forget_signals():
  """Signals sent by these tests are recorded process-wide; later tests start clean."""
  yield
  ckpt.clear_preemption()


@struct.dataclass
class ToyState:
  params: dict
  opt_state: optax.OptState
  key: jax.Array  # typed PRNG key
  step: jax.Array  # int32 scalar


def _state_on(mesh):
  w = jnp.arange(16 * 8, dtype=jnp.float32).reshape(16, 8)
  params = {
    "dense": {
      "kernel": jax.device_put(w, NamedSharding(mesh, P("fsdp", None))),
      "bias": jax.device_put(jnp.ones((8,)), NamedSharding(mesh, P())),
    }
  }
  opt_state = optax.adam(1e-3).init(params)
  keys = jax.device_put(jax.random.split(jax.random.key(3), 8), NamedSharding(mesh, P("fsdp")))
  return ToyState(params=params, opt_state=opt_state, key=keys, step=jnp.int32(7))


def _abstract_on(mesh_or_device, state):
  if isinstance(mesh_or_device, jax.sharding.Mesh):

    def sharding(x):
      spec = P(("data", "fsdp"), "tensor") if x.ndim == 2 else P()
      return NamedSharding(mesh_or_device, spec)
  else:

    def sharding(x):
      return jax.sharding.SingleDeviceSharding(mesh_or_device)

  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding(x)), state)


def _assert_same(a, b):
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  assert ta == tb
  for x, y in zip(la, lb):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      assert jax.dtypes.issubdtype(y.dtype, jax.dtypes.prng_key)
      x, y = jax.random.key_data(x), jax.random.key_data(y)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_save_restore_onto_other_meshes_and_single_device(tmp_path):
  state = _state_on(make_mesh(1, 8, 1))
  mgr = ckpt.open_manager(tmp_path / "ckpt")
  assert ckpt.latest_step(mgr) is None
  assert ckpt.save(mgr, 5, state, extra={"data_position": 40, "cfg": {"lr": 0.1}}, wait=True)
  assert ckpt.latest_step(mgr) == 5

  mesh2 = make_mesh(2, 2, 2)
  restored, extra = ckpt.restore(mgr, _abstract_on(mesh2, state))
  assert extra == {"data_position": 40, "cfg": {"lr": 0.1}}
  assert isinstance(restored, ToyState)
  _assert_same(restored, state)
  kernel = restored.params["dense"]["kernel"]
  assert kernel.sharding.mesh.shape == mesh2.shape
  assert kernel.sharding.spec == P(("data", "fsdp"), "tensor")
  # Typed keys come back typed and still usable.
  assert jax.dtypes.issubdtype(restored.key.dtype, jax.dtypes.prng_key)
  np.testing.assert_array_equal(
    jax.random.uniform(restored.key[0]), jax.random.uniform(state.key[0])
  )

  dev = jax.devices()[3]
  single, _ = ckpt.restore(ckpt.open_manager(tmp_path / "ckpt"), _abstract_on(dev, state), step=5)
  _assert_same(single, state)
  assert single.params["dense"]["kernel"].devices() == {dev}
  mgr.close()


def test_keeps_last_n_and_restores_older_step(tmp_path):
  mgr = ckpt.open_manager(tmp_path, max_to_keep=2)
  for step in range(4):
    ckpt.save(mgr, step, {"x": jnp.full((3,), float(step))}, extra={"step": step})
  mgr.wait_until_finished()
  assert ckpt.all_steps(mgr) == [2, 3]
  abstract = ckpt.abstract_like({"x": jnp.zeros((3,))})
  state, extra = ckpt.restore(mgr, abstract, step=2)
  np.testing.assert_array_equal(state["x"], np.full((3,), 2.0))
  assert extra == {"step": 2}
  with pytest.raises(FileNotFoundError, match=r"step 0 .*available steps: \[2, 3\]"):
    ckpt.restore(mgr, abstract, step=0)
  mgr.close()


def test_errors_name_path_and_key(tmp_path):
  not_dir = tmp_path / "file"
  not_dir.write_text("x")
  with pytest.raises(NotADirectoryError, match=str(not_dir)):
    ckpt.open_manager(not_dir)
  with pytest.raises(FileNotFoundError, match="missing"):
    ckpt.open_manager(tmp_path / "missing", create=False)

  mgr = ckpt.open_manager(tmp_path / "c", async_save=False)
  with pytest.raises(FileNotFoundError, match="no checkpoint found in"):
    ckpt.restore(mgr, {"a": jax.ShapeDtypeStruct((2,), jnp.float32)})
  with pytest.raises(TypeError, match="not JSON-serialisable"):
    ckpt.save(mgr, 0, {"a": jnp.zeros(2)}, extra={"bad": object()})

  ckpt.save(mgr, 1, {"params": {"w": jnp.zeros((2, 3)), "b": jnp.zeros(3)}})
  step_dir = os.path.join(str(tmp_path / "c"), "1")
  sds = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)  # noqa: E731
  with pytest.raises(ckpt.CheckpointError, match=rf"{step_dir}.*'params/bias'.* not in the ch"):
    ckpt.restore(mgr, {"params": {"w": sds(2, 3), "bias": sds(3)}})
  with pytest.raises(ckpt.CheckpointError, match=r"checkpoint key 'params/b' is not in"):
    ckpt.restore(mgr, {"params": {"w": sds(2, 3)}})
  with pytest.raises(ckpt.CheckpointError, match=r"shape mismatch at key 'params/w'.*\(2, 3\)"):
    ckpt.restore(mgr, {"params": {"w": sds(3, 2), "b": sds(3)}})
  with pytest.raises(ckpt.CheckpointError, match="saved as a plain array"):
    ckpt.restore(
      mgr, {"params": {"w": sds(2, 3), "b": jax.ShapeDtypeStruct((), jax.random.key(0).dtype)}}
    )

  # Corrupt every file of the array store: the error names the step directory.
  for root, _, files in os.walk(os.path.join(step_dir, "state")):
    for f in files:
      with open(os.path.join(root, f), "wb") as fh:
        fh.write(b"\x00garbage")
  with pytest.raises(ckpt.CheckpointError, match=step_dir):
    ckpt.restore(mgr, {"params": {"w": sds(2, 3), "b": sds(3)}})
  mgr.close()


def test_failed_save_leaves_earlier_steps_intact(tmp_path, monkeypatch):
  directory = tmp_path / "c"
  mgr = ckpt.open_manager(directory)
  ckpt.save(mgr, 1, {"x": jnp.arange(4.0)}, extra={"ok": True}, wait=True)

  async def failing_write(self, x, directory):
    raise OSError("simulated disk full")

  monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", failing_write)
  with pytest.raises(Exception, match="simulated disk full"):
    ckpt.save(mgr, 2, {"x": jnp.arange(4.0) + 100}, extra={"ok": False}, wait=True)
  monkeypatch.undo()

  # The failed step stayed in a temporary directory and is invisible; step 1 is unchanged.
  leftovers = [n for n in os.listdir(directory) if n.startswith("2")]
  assert all(".orbax-checkpoint-tmp" in n for n in leftovers)
  fresh = ckpt.open_manager(directory)
  assert ckpt.all_steps(fresh) == [1]
  state, extra = ckpt.restore(fresh, ckpt.abstract_like({"x": jnp.zeros(4)}))
  np.testing.assert_array_equal(state["x"], np.arange(4.0))
  assert extra == {"ok": True}
  # And saving that step again works.
  ckpt.save(fresh, 2, {"x": jnp.ones(4)}, wait=True)
  assert ckpt.all_steps(fresh) == [1, 2]
  fresh.close()
  mgr.close()


def test_preemption_guard_sigterm_restores_previous_handler():
  calls = []
  previous = lambda signum, frame: calls.append(signum)  # noqa: E731
  original = signal.signal(signal.SIGTERM, previous)
  try:
    with ckpt.PreemptionGuard() as guard:
      assert not guard.should_stop()
      os.kill(os.getpid(), signal.SIGTERM)
      assert guard.should_stop()
      assert guard.signal_received == signal.SIGTERM
      assert calls == []  # our handler ran, not the previous one
    assert signal.getsignal(signal.SIGTERM) is previous
    os.kill(os.getpid(), signal.SIGTERM)
    assert calls == [signal.SIGTERM]
  finally:
    signal.signal(signal.SIGTERM, original)


def test_preemption_guard_sigint_optional():
  before = signal.getsignal(signal.SIGINT)
  with ckpt.PreemptionGuard(handle_sigint=True) as guard:
    os.kill(os.getpid(), signal.SIGINT)
    assert guard.should_stop()
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C escalates
  assert signal.getsignal(signal.SIGINT) is before


# ----------------------------------------------------------------------------- resume test

_X = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
_Y = (_X @ np.array([1.0, -2.0, 0.5, 3.0], np.float32))[:, None]
_OPT = optax.adam(1e-2)


def _mlp(params, x):
  h = jnp.tanh(x @ params["w1"] + params["b1"])
  return h @ params["w2"] + params["b2"]


@jax.jit
def _train_step(state, xb, yb):
  # Dropout noise from the RNG folded with the step: the trajectory depends on the step only.
  key = jax.random.fold_in(state.key, state.step)

  def loss_fn(params):
    keep = jax.random.bernoulli(key, 0.8, (xb.shape[0], params["w1"].shape[1]))
    h = jnp.tanh(xb @ params["w1"] + params["b1"]) * keep / 0.8
    return jnp.mean((h @ params["w2"] + params["b2"] - yb) ** 2)

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  updates, opt_state = _OPT.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  return ToyState(params=params, opt_state=opt_state, key=state.key, step=state.step + 1), loss


def _init_state():
  k1, k2 = jax.random.split(jax.random.key(0))
  params = {
    "w1": jax.random.normal(k1, (4, 16)) * 0.5,
    "b1": jnp.zeros(16),
    "w2": jax.random.normal(k2, (16, 1)) * 0.5,
    "b2": jnp.zeros(1),
  }
  return ToyState(
    params=params, opt_state=_OPT.init(params), key=jax.random.key(42), step=jnp.int32(0)
  )


def _run(state, position, n_steps):
  """``position`` is the data iterator state: index of the next batch of 8 rows."""
  for _ in range(n_steps):
    lo = (position * 8) % len(_X)
    state, _ = _train_step(state, _X[lo : lo + 8], _Y[lo : lo + 8])
    position += 1
  return state, position


def test_interrupted_equals_uninterrupted(tmp_path):
  straight, _ = _run(_init_state(), 0, 10)

  state, position = _run(_init_state(), 0, 6)
  mgr = ckpt.open_manager(tmp_path / "ckpt")
  ckpt.save(mgr, int(state.step), state, extra={"data_position": position})
  mgr.close()
  abstract = ckpt.abstract_like(jax.eval_shape(_init_state))
  del state, position, mgr

  mgr = ckpt.open_manager(tmp_path / "ckpt")
  assert ckpt.latest_step(mgr) == 6
  state, extra = ckpt.restore(mgr, abstract)
  resumed, _ = _run(state, extra["data_position"], 4)
  mgr.close()

  assert int(resumed.step) == 10
  _assert_same(resumed.params, straight.params)
  _assert_same(resumed.opt_state, straight.opt_state)


# ----------------------------------------------------------------------------- integrity


def _flip_a_byte(step_dir, frac=0.5):
  """Flips one bit in the middle of the largest array-data file of a saved step (what a bad
  disk or a torn copy does): the data still decodes, to wrong values."""
  files = [
    os.path.join(r, f)
    for r, _, fs in os.walk(os.path.join(step_dir, "state"))
    for f in fs
    if os.sep + "d" + os.sep in os.path.join(r, f)
  ]
  big = max(files, key=os.path.getsize)
  data = bytearray(open(big, "rb").read())
  data[int(len(data) * frac)] ^= 0x10
  with open(big, "wb") as f:
    f.write(bytes(data))


@pytest.mark.parametrize("frac", [0.3, 0.7])
def test_flipped_bytes_stop_the_restore_naming_the_step(tmp_path, frac):
  state = {"w": jax.random.normal(jax.random.PRNGKey(0), (4096,)), "b": jnp.ones(3)}
  mgr = ckpt.open_manager(tmp_path, async_save=False)
  ckpt.save(mgr, 1, state, wait=True)
  ckpt.save(mgr, 2, state, wait=True)
  _flip_a_byte(tmp_path / "2", frac)
  with pytest.raises(
    ckpt.CheckpointError,
    match=r"2: the checkpoint of step 2 is corrupt "
    r"\(checksum mismatch in 'w'\)",
  ):
    ckpt.restore(mgr, state)
  out, _ = ckpt.restore(mgr, state, step=1)  # the intact step still restores exactly
  _assert_same(out, state)
  mgr.close()


def test_save_refuses_non_finite_state(tmp_path):
  mgr = ckpt.open_manager(tmp_path, async_save=False)
  state = {"params": {"w": jnp.array([1.0, jnp.nan]), "b": jnp.ones(2)}, "step": jnp.int32(3)}
  with pytest.raises(
    ckpt.CheckpointError,
    match=r"refusing to save step 3 .*non-finite values "
    r"in 'params/w'",
  ):
    ckpt.save(mgr, 3, state, wait=True)
  assert ckpt.all_steps(mgr) == []
  mgr.close()


def test_a_signal_is_recorded_for_the_stage_boundary_check():
  """A SIGTERM that arrives under any guard (after the loop's last check, say) stops an
  orchestrating loop at its next stage boundary."""
  ckpt.clear_preemption()
  ckpt.check_preemption("nothing")  # no signal: no-op
  try:
    with ckpt.PreemptionGuard():
      os.kill(os.getpid(), signal.SIGTERM)
    assert ckpt.preemption_requested()
    with pytest.raises(ckpt.Preempted, match="stopped by a signal before round 2"):
      ckpt.check_preemption("round 2")
  finally:
    ckpt.clear_preemption()
  assert ckpt.EXIT_PREEMPTED == 75
