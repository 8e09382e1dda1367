"""The DPO / IPO training loop: reference log-probs once, then epochs × minibatches of steps.

``train_dpo(...)`` takes the policy, the frozen reference and tokenised preference pairs as
explicit arguments (the pipeline's policy stage calls it for ``algorithm="dpo" | "ipo"``).
It is the reward trainer's loop (:mod:`rlhf_jax.train.reward`) around
:func:`rlhf_jax.dpo.make_dpo_step`: a seeded permutation per epoch (a resumed run sees the
same order without iterator state), one jitted step with the state donated, metrics fetched
every ``log_every`` steps to ``workdir/metrics.jsonl`` and TensorBoard, checkpoints every
``checkpoint_every`` steps, at the end and on SIGTERM, and a stop when too many updates are
skipped as non-finite.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import checkpoint, sharding
from rlhf_jax import dpo as dpo_lib
from rlhf_jax import reward as reward_lib
from rlhf_jax.models import Transformer
from rlhf_jax.train import common
from rlhf_jax.train.metrics import MetricWriter, fetch, progress, truncate_metrics
from rlhf_jax.train.reward import _batches, _pad_rows

__all__ = ["PAIR_KEYS", "reference_logprobs", "train_dpo"]

PAIR_KEYS = ("ids_a", "mask_a", "ids_b", "mask_b", "label")


def reference_logprobs(
  model: Transformer,
  ref_params,
  pairs: Dict[str, np.ndarray],
  *,
  response_len: int,
  batch_size: int,
  mesh,
) -> Tuple[np.ndarray, np.ndarray]:
  """Summed response log-probs ``(ref_logp_a [N], ref_logp_b [N])`` of every pair under the
  frozen reference, on the host: one jitted program over fixed-size batches (the last one
  padded), run once per training call."""
  fn = jax.jit(dpo_lib.make_pair_logprobs(model, response_len))
  n = len(pairs["label"])
  out_a, out_b = [], []
  for s, e in _batches(n, batch_size):
    rows = {key: _pad_rows(pairs[key][s:e], batch_size) for key in PAIR_KEYS}
    a, b = fn(ref_params, sharding.shard_batch(rows, mesh))
    out_a.append(np.asarray(a)[: e - s])
    out_b.append(np.asarray(b)[: e - s])
  return np.concatenate(out_a), np.concatenate(out_b)


def train_dpo(
  model: Transformer,
  params,
  ref_params,
  pairs: Dict[str, np.ndarray],
  *,
  hp: dpo_lib.DPOHparams,
  optim_spec: common.OptimSpec,
  epochs: int,
  batch_size: int,
  response_len: int,
  mesh,
  seed: int,
  workdir: str,
  desc: str = "dpo",
  log_every: int = 20,
  checkpoint_every: int = 500,
  keep_checkpoints: int = 2,
  max_skipped_fraction: float = 0.1,
) -> Tuple[Any, dict]:
  """The policy ``params`` trained with DPO / IPO (``hp``) on ``pairs`` against the frozen
  ``ref_params``.

  ``pairs``: the pipeline's layout (:func:`rlhf_jax.train.pipeline.pairs_arrays`),
  ``ids_a, mask_a, ids_b, mask_b`` ``[N, P + response_len]`` and ``label`` ``[N]``. The
  reference's log-probs are computed once here (:func:`reference_logprobs`) and fed to every
  step as data. ``epochs × (N // batch_size)`` steps; the last partial batch of an epoch is
  dropped (the permutation changes every epoch). Returns the trained policy params (fresh
  arrays: the caller's ``params`` and ``ref_params`` are neither donated nor changed) and a
  summary: ``dpo_train_pairs``, ``dpo_steps``, ``dpo_skipped_updates``, ``dpo_tie_param``
  and the last logged step's metrics prefixed ``dpo_``.

  A call with the same arguments resumes from ``workdir/checkpoints`` (a finished run only
  recomputes the reference log-probs and returns).

  Raises:
    DivergenceError: more than ``max_skipped_fraction`` of the updates were non-finite.
    rlhf_jax.checkpoint.Preempted: stopped by a signal after saving a checkpoint.
  """
  n = len(pairs["label"])
  if n < batch_size:
    raise ValueError(f"{desc}: {n} pairs is fewer than batch_size={batch_size}")
  steps_per_epoch = n // batch_size
  total = steps_per_epoch * epochs
  ref_a, ref_b = reference_logprobs(
    model, ref_params, pairs, response_len=response_len, batch_size=batch_size, mesh=mesh
  )
  data = {key: np.asarray(pairs[key]) for key in PAIR_KEYS}
  data.update(ref_logp_a=ref_a.astype(np.float32), ref_logp_b=ref_b.astype(np.float32))

  optimizer, schedule = common.make_optimizer(optim_spec, total)
  optimizer = dpo_lib.dpo_optimizer(optimizer, hp)
  # The state is donated to each step; copy, so that the caller's params (which may be the
  # reference's own arrays, as in a first round) stay alive.
  start_params = jax.tree.map(jnp.copy, params)
  state = sharding.commit(dpo_lib.init_dpo_state(start_params, optimizer, hp), mesh)
  step = sharding.jit_step(dpo_lib.make_dpo_step(model, optimizer, hp, response_len), state, mesh)
  os.makedirs(workdir, exist_ok=True)
  manager = checkpoint.open_manager(
    os.path.join(workdir, "checkpoints"), max_to_keep=keep_checkpoints
  )
  start = 0
  if checkpoint.latest_step(manager) is not None:
    state, extra = checkpoint.restore(manager, checkpoint.abstract_like(state))
    start = int(extra["step"])
  if jax.process_index() == 0:
    truncate_metrics(workdir, start)
  rng = np.random.default_rng(seed)
  preempted, last = False, {}
  with MetricWriter(workdir, resume_step=start) as writer, checkpoint.PreemptionGuard() as guard:
    bar = progress(total, desc=desc, unit="step")
    bar.update(start)
    i = 0
    for _ in range(epochs):
      perm = rng.permutation(n)  # drawn for every epoch, so a resumed run sees the same order
      for s in range(steps_per_epoch):
        i += 1
        if i <= start:
          continue
        rows = perm[s * batch_size : (s + 1) * batch_size]
        batch = sharding.shard_batch({key: v[rows] for key, v in data.items()}, mesh)
        state, metrics = step(state, batch)
        if i % log_every == 0 or i == total:
          last = dict(fetch(metrics), learning_rate=float(schedule(i)))
          writer.write(i, last)
          bar.set_postfix(loss=last["loss"], acc=last["accuracy"], margin=last["reward_margin"])
          common.check_skipped(
            desc, last["skipped_updates"], i, total, max_skipped_fraction, f"step {i}"
          )
        bar.update(1)
        preempted = guard.should_stop()
        if i % checkpoint_every == 0 or i == total or preempted:
          checkpoint.save(manager, i, state, extra={"step": i}, force=True, wait=preempted)
        if preempted:
          break
      if preempted:
        break
    bar.close()
  manager.wait_until_finished()
  manager.close()
  if preempted:
    raise checkpoint.Preempted(
      f"{desc}: stopped by a signal at step {i} of {total}; checkpoint saved, rerun to resume"
    )
  tie = float(reward_lib.tie_parameter(state.params["tie"], hp.tie_model))
  summary = {"dpo_" + k: v for k, v in last.items() if k not in ("tie_param", "skipped_updates")}
  summary.update(
    dpo_train_pairs=int(n),
    dpo_steps=int(total),
    dpo_skipped_updates=int(state.skipped_updates),
    dpo_tie_param=tie,
  )
  return state.params["model"], summary
