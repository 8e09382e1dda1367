"""Trainers run by one or several processes (not a test module; tests/test_multiprocess.py
starts it).

``python tests/mp_worker.py OUT NPROC PID PORT LOCAL_DEVICES MODE`` runs, on a tiny model, the
library's trainers on the mesh named by ``MODE``:

* ``data_fsdp`` / ``fsdp_tensor``: one reward-model epoch (``train_reward_model``), one PPO
  iteration with a separate critic and one GRPO iteration (``train_ppo``) on the mesh
  (data=2, fsdp=4) or (fsdp=4, tensor=2); process 0 writes the final params (gathered from
  every process) and the metrics to ``OUT/result.npz``;
* ``ppo_loop``: PPO iterations on (data=2, fsdp=4) with a checkpoint every iteration, printing
  its metrics to ``OUT/ppo_loop/metrics.jsonl`` (for the fault tests: kill a process, send
  SIGTERM), and at the end the params to ``OUT/final.npz``. ``$MP_ITERATIONS`` iterations
  (default 1000).

With NPROC > 1 the processes meet at 127.0.0.1:PORT; each owns LOCAL_DEVICES CPU devices.
"""

import os
import sys
import time

import jax

OUT, NPROC, PID, PORT, LOCAL, MODE = sys.argv[1:7]
NPROC, PID, LOCAL = int(NPROC), int(PID), int(LOCAL)
jax.config.update("jax_num_cpu_devices", LOCAL)  # before the backend starts

import dataclasses  # noqa: E402

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from rlhf_jax import checkpoint, distributed, ppo, reward, sharding  # noqa: E402
from rlhf_jax.models import Transformer, TransformerConfig, boxed_init_fn  # noqa: E402
from rlhf_jax.train import common  # noqa: E402
from rlhf_jax.train import ppo as ppo_train  # noqa: E402
from rlhf_jax.train import reward as reward_train  # noqa: E402

if NPROC > 1:
  distributed.maybe_initialize(
    f"127.0.0.1:{PORT}",
    num_processes=NPROC,
    process_id=PID,
    initialization_timeout=60,
    heartbeat_timeout_seconds=int(os.environ.get("MP_HEARTBEAT", "10")),
  )
assert jax.device_count() == 8, jax.device_count()

VOCAB = 24
BASE = TransformerConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=2, max_len=32)
HP = ppo.PPOHparams(
  response_len=6,
  num_minibatches=2,
  epochs=2,
  temperature=1.0,
  eos_id=0,
  pad_id=1,
  kl_target=1.0,
  kl_horizon=100.0,
)
GRPO = dataclasses.replace(HP, algorithm="grpo", group_size=4)
MESHES = {"data_fsdp": (2, 4, 1), "fsdp_tensor": (1, 4, 2), "ppo_loop": (2, 4, 1)}


def sharded_init(model, seed, mesh):
  """Params of ``model`` created already sharded on ``mesh`` (the same values on every mesh and
  in every process: the init is a function of the key)."""
  return sharding.init_sharded(boxed_init_fn(model), jax.random.PRNGKey(seed), mesh=mesh)[0]


def gather(tree):
  """Every leaf as a host numpy array of its global value (a collective: all processes)."""
  return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def flat(prefix, tree, out):
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    out[prefix + jax.tree_util.keystr(path)] = np.asarray(leaf)


def toy_data(n_pairs=64, n_prompts=32, t=8, p=5):
  """Preference pairs and prompts, the same arrays in every process (a seeded draw)."""
  rng = np.random.default_rng(0)
  pairs = {}
  for side in ("a", "b"):
    ids = rng.integers(2, VOCAB, (n_pairs, t)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[: n_pairs // 2, :2] = 0
    ids[mask == 0] = 1
    pairs["ids_" + side], pairs["mask_" + side] = ids, mask
  pairs["label"] = rng.integers(0, 2, n_pairs).astype(np.int32)
  ids = rng.integers(2, VOCAB, (n_prompts, p)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[: n_prompts // 2, :2] = 0
  ids[mask == 0] = HP.pad_id
  return pairs, ids, mask


def run_ppo(hp, mesh, workdir, prompt_ids, prompt_mask, iterations, seed, critic=True, **kw):
  policy = Transformer(BASE.replace(head="lm"))
  rm = Transformer(BASE.replace(head="scalar"))
  pp = sharded_init(policy, 1, mesh)
  rp = sharded_init(rm, 2, mesh)
  ref = jax.tree.map(jnp.copy, pp)
  return ppo_train.train_ppo(
    policy_model=policy,
    policy_params=pp,
    value_model=rm if critic else None,
    value_params=jax.tree.map(jnp.copy, rp) if critic else None,
    reward_model=rm,
    reward_params=rp,
    ref_params=ref,
    prompt_ids=prompt_ids,
    prompt_mask=prompt_mask,
    hp=hp,
    optim_spec=common.OptimSpec(learning_rate=1e-3),
    batch_size=8,
    iterations=iterations,
    init_kl_coef=0.1,
    reward_gain=1.0,
    reward_bias=0.0,
    mesh=mesh,
    seed=seed,
    workdir=workdir,
    **kw,
  )


def main():
  t0 = time.perf_counter()
  mesh = sharding.make_mesh(*MESHES[MODE])
  pairs, prompt_ids, prompt_mask = toy_data()
  if MODE == "ppo_loop":
    iterations = int(os.environ.get("MP_ITERATIONS", "1000"))
    try:
      state, _ = run_ppo(
        HP,
        mesh,
        os.path.join(OUT, "ppo_loop"),
        prompt_ids,
        prompt_mask,
        iterations,
        seed=5,
        checkpoint_every=1,
      )
    except checkpoint.Preempted as e:
      print(f"PREEMPTED {e}", flush=True)
      sys.exit(checkpoint.EXIT_PREEMPTED)
    params = sharding.to_host(state.params)
    if jax.process_index() == 0:
      out = {}
      flat("ppo", params, out)
      np.savez(os.path.join(OUT, "final.npz"), **out)
    return
  out = {}
  # (1) One reward-model epoch: 64 pairs in 4 steps of 16.
  rm = Transformer(BASE.replace(head="scalar"))
  rm_params, rm_result = reward_train.train_reward_model(
    rm,
    sharded_init(rm, 0, mesh),
    pairs,
    pairs,
    hp=reward.RewardHparams(),
    optim_spec=common.OptimSpec(name="adamw", learning_rate=3e-3),
    epochs=1,
    batch_size=16,
    mesh=mesh,
    seed=0,
    workdir=os.path.join(OUT, "rm"),
  )
  print("T rm", time.perf_counter() - t0, flush=True)
  flat("rm", gather(rm_params), out)
  for k, v in rm_result.items():
    out["rm_metric/" + k] = np.asarray(v, np.float64)
  # (2) One PPO iteration with a separate critic; (3) one GRPO iteration (no critic).
  for name, hp, critic in (("ppo", HP, True), ("grpo", GRPO, False)):
    state, history = run_ppo(
      hp, mesh, os.path.join(OUT, name), prompt_ids, prompt_mask, 1, seed=3, critic=critic
    )
    print("T", name, time.perf_counter() - t0, flush=True)
    flat(name, gather(state.params), out)
    for k, v in history[-1].items():
      if k not in ("iteration_seconds", "samples_per_second"):
        out[f"{name}_metric/{k}"] = np.asarray(v, np.float64)
  if jax.process_index() == 0:
    np.savez(os.path.join(OUT, "result.npz"), **out)
  print("DONE", flush=True)


if __name__ == "__main__":
  main()
