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

import functools
from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import dpo as dpo_lib
from rlhf_jax import reward as reward_lib
from rlhf_jax import sharding
from rlhf_jax.lora import is_lora
from rlhf_jax.models import Transformer
from rlhf_jax.train import common

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
  return common.pair_outputs(
    fn, ref_params, {key: pairs[key] for key in PAIR_KEYS}, batch_size, mesh
  )


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

  LoRA: ``params`` may be a :class:`rlhf_jax.lora.LoraParams` on the frozen ``ref_params``
  (the reference is the base with adapters off); the base is then an input of every step and
  the returned params are the trained adapters.

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
  if is_lora(params):  # adapters on the reference: the base is an input of every step
    step = functools.partial(step, base=ref_params)
  # The loop's metric writer drops the rows past a restored checkpoint.
  loop = common.TrainLoop(
    workdir,
    keep_checkpoints,
    checkpoint_every,
    total,
    desc,
    max_skipped_fraction=max_skipped_fraction,
  )
  state, last = common.run_epochs(
    step,
    state,
    data,
    loop,
    epochs=epochs,
    batch_size=batch_size,
    seed=seed,
    mesh=mesh,
    schedule=schedule,
    log_every=log_every,
    postfix={"loss": "loss", "acc": "accuracy", "margin": "reward_margin"},
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
