"""Reward-model training and scoring as pure functions.

A reward model is a ``Transformer`` with ``head="scalar"``; the score of a (prompt,
response) sequence is the head's output at the last real token. Pairs are scored in one
forward pass over ``[2B, T]`` (a and b concatenated on the batch axis) and trained with
:func:`rlhf_jax.losses.preference_loss`, which handles "a", "b" and "tie" labels
(Bradley-Terry, Rao-Kupper or Davidson ties; the tie parameter can be learned).

Batches are dicts of arrays: ``ids_a, mask_a, ids_b, mask_b`` ``[B, T]`` and ``label``
``[B]`` (``LABEL_A=0``, ``LABEL_B=1``, ``LABEL_TIE=2``) — or, for K responses to each
prompt (InstructGPT's K-wise comparisons), ``ids, mask`` ``[G, K, T]`` and ``label``
``[G, K(K-1)/2]``, the labels of the pairs ``(i, j), i < j`` in :func:`group_pairs` order:
each response is scored once and every comparison among a prompt's responses is trained on
(:func:`group_pairs` builds the layout from pair arrays).

``RewardState.params["model"]`` is the trainable pytree: the model's params, or LoRA
adapters plus the scalar head (:class:`rlhf_jax.lora.LoraParams`) on a frozen base that the
step takes as its third argument.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Tuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlhf_jax import losses
from rlhf_jax.advantages import last_token_index
from rlhf_jax.lora import factored_params
from rlhf_jax.models import Transformer
from rlhf_jax.update import guarded_update

__all__ = [
  "RewardHparams",
  "RewardState",
  "init_reward_state",
  "pair_step",
  "score_sequences",
  "tie_parameter",
  "raw_tie",
  "reward_optimizer",
  "make_reward_step",
  "make_pair_scorer",
  "preference_metrics",
  "group_pairs",
  "group_pair_index",
]


@dataclasses.dataclass(frozen=True)
class RewardHparams:
  """Static reward-model settings.

  Ties: under Rao-Kupper a tie is the most probable outcome at equal rewards only when
  θ > 2 (``P(tie | Δ=0) = (θ - 1)/(θ + 1)``), so θ must be fitted to the labels for tie
  predictions to mean anything. The tie parameter gets its own Adam learning rate
  (``tie_learning_rate``; the trunk's rate would move it by ~0.001 in a run), and with
  ``refit_tie_param`` it is refitted by maximum likelihood on the training pairs' final
  scores after training (:func:`rlhf_jax.losses.fit_tie_parameter`).
  """

  tie_model: str = "rao_kupper"  # "bradley_terry" | "rao_kupper" | "davidson"
  init_tie_param: float = 1.5  # θ >= 1 (Rao-Kupper) or ν >= 0 (Davidson)
  learn_tie_param: bool = True
  tie_learning_rate: float = 0.05  # Adam learning rate of the (unconstrained) tie parameter
  refit_tie_param: bool = True  # maximum-likelihood refit on the final training scores
  center_coef: float = 0.0  # TRL's reward centring: coef * mean((r_a + r_b)^2)

  def __post_init__(self):
    if self.tie_model not in ("bradley_terry", "rao_kupper", "davidson"):
      raise ValueError(
        f"RewardHparams.tie_model={self.tie_model!r}; expected 'bradley_terry',"
        " 'rao_kupper' or 'davidson'"
      )
    if self.tie_model == "rao_kupper" and self.init_tie_param < 1:
      raise ValueError(
        f"RewardHparams.init_tie_param={self.init_tie_param}: Rao-Kupper needs theta >= 1"
      )
    if self.tie_model == "davidson" and self.init_tie_param < 0:
      raise ValueError(
        f"RewardHparams.init_tie_param={self.init_tie_param}: Davidson needs nu >= 0"
      )
    if self.tie_learning_rate < 0:
      raise ValueError(f"RewardHparams.tie_learning_rate={self.tie_learning_rate}: expected >= 0")


class RewardState(flax.struct.PyTreeNode):
  """params: ``{"model": ..., "tie": raw scalar}``; the tie parameter (θ or ν through
  :func:`tie_parameter`) is learned when ``learn_tie_param``, else its gradient is stopped."""

  params: Any
  opt_state: Any
  step: jax.Array
  skipped_updates: jax.Array


def raw_tie(value: float, tie_model: str) -> float:
  """The unconstrained scalar whose :func:`tie_parameter` is ``value`` (θ or ν)."""
  if tie_model == "rao_kupper":
    log_theta = max(float(np.log(value)), 1e-6)
    return float(np.log(np.expm1(log_theta)))
  if tie_model == "davidson":
    return float(np.log(max(value, 1e-6)))
  return 0.0


def reward_optimizer(
  model_optimizer: optax.GradientTransformation, hp: RewardHparams
) -> optax.GradientTransformation:
  """``model_optimizer`` for the model params and Adam at ``hp.tie_learning_rate`` for the
  tie parameter (params ``{"model": ..., "tie": scalar}``)."""
  labels = lambda params: {"model": jax.tree.map(lambda _: "model", params["model"]), "tie": "tie"}
  return optax.multi_transform(
    {"model": model_optimizer, "tie": optax.adam(hp.tie_learning_rate)}, labels
  )


def tie_parameter(raw: jax.Array, tie_model: str) -> jax.Array:
  """θ (Rao-Kupper) or ν (Davidson) from the unconstrained learned scalar; 1 for BT."""
  if tie_model == "rao_kupper":
    return losses.rao_kupper_theta(raw)
  if tie_model == "davidson":
    return losses.davidson_nu(raw)
  return jnp.ones((), jnp.float32)


def init_reward_state(
  model_params, optimizer: optax.GradientTransformation, hp: RewardHparams
) -> RewardState:
  params = {
    "model": model_params,
    "tie": jnp.asarray(raw_tie(hp.init_tie_param, hp.tie_model), jnp.float32),
  }
  return RewardState(
    params=params,
    opt_state=optimizer.init(params),
    step=jnp.zeros((), jnp.int32),
    skipped_updates=jnp.zeros((), jnp.int32),
  )


def score_sequences(model: Transformer, params, ids_BT, mask_BT) -> jax.Array:
  """Reward-model scores ``[B]``: the scalar head at each row's last real token."""
  scores_BT = model.apply({"params": params}, ids_BT, mask_BT)
  last_B, _ = last_token_index(mask_BT)
  return jnp.take_along_axis(scores_BT, last_B[:, None], axis=1)[:, 0]


def group_pair_index(k: int) -> Tuple[np.ndarray, np.ndarray]:
  """``(i, j)``: the responses compared by each of the ``k(k-1)/2`` pairs of a group, in the
  order of its labels: ``(0, 1), (0, 2), ..., (0, k-1), (1, 2), ..., (k-2, k-1)``."""
  return np.triu_indices(k, 1)


def group_pairs(pairs: Dict[str, np.ndarray], k: int) -> Dict[str, np.ndarray]:
  """Pair arrays whose rows are whole groups — ``k(k-1)/2`` consecutive pairs per prompt,
  comparing the prompt's ``k`` responses in :func:`group_pair_index` order — as the grouped
  layout: ``ids, mask`` ``[G, k, T]`` (each response once) and ``label`` ``[G, k(k-1)/2]``.

  Raises ``ValueError`` when the rows are not such groups (a count that is not a multiple,
  or a response that differs between two pairs that should share it)."""
  if k < 2:
    raise ValueError(f"group_pairs: k={k}; expected >= 2")
  i, j = group_pair_index(k)
  per = len(i)
  n = len(pairs["label"])
  if n % per:
    raise ValueError(f"group_pairs: {n} pairs is not a multiple of {per} (k={k} responses)")
  g = n // per
  out = {"label": np.asarray(pairs["label"]).reshape(g, per)}
  # response r: side a of its first pair (r, r+1), or side b of (0, k-1) for the last one
  first = [int(np.flatnonzero(i == r)[0]) for r in range(k - 1)]
  for key in ("ids", "mask"):
    a = np.asarray(pairs[f"{key}_a"]).reshape(g, per, -1)
    b = np.asarray(pairs[f"{key}_b"]).reshape(g, per, -1)
    resp = np.concatenate([a[:, first], b[:, [k - 2]]], 1)
    if not (np.array_equal(resp[:, i], a) and np.array_equal(resp[:, j], b)):
      raise ValueError(
        f"group_pairs: the pairs are not groups of k={k} responses per prompt in "
        f"group_pair_index order ({key}_a / {key}_b disagree within a group)"
      )
    out[key] = resp
  return out


def _pair_scores(model, params, batch):
  """``(r_a, r_b)``: ``[B]`` for pair batches, ``[G, k(k-1)/2]`` for grouped ones."""
  if "ids" in batch:  # grouped: score each response once, then every pair of the group
    g, k, t = batch["ids"].shape
    scores = score_sequences(
      model, params, batch["ids"].reshape(g * k, t), batch["mask"].reshape(g * k, t)
    ).reshape(g, k)
    i, j = group_pair_index(k)
    return scores[:, i], scores[:, j]
  ids = jnp.concatenate([batch["ids_a"], batch["ids_b"]], axis=0)
  mask = jnp.concatenate([batch["mask_a"], batch["mask_b"]], axis=0)
  scores = score_sequences(model, params, ids, mask)
  b = batch["ids_a"].shape[0]
  return scores[:b], scores[b:]


def make_reward_step(
  model: Transformer, optimizer: optax.GradientTransformation, hp: RewardHparams
) -> Callable:
  """``step(state, batch, base=None) -> (state, metrics)``; jit it with the state donated.
  ``base``: the frozen params under LoRA (:func:`rlhf_jax.lora.factored_params`), else None."""
  if model.cfg.head != "scalar":
    raise ValueError(f"reward model needs head='scalar', got {model.cfg.head!r}")

  def loss_fn(params, batch, base):
    r_a, r_b = _pair_scores(model, factored_params(params["model"], base), batch)
    r_a, r_b = r_a.reshape(-1), r_b.reshape(-1)  # grouped: every pair of every group
    raw = params["tie"] if hp.learn_tie_param else jax.lax.stop_gradient(params["tie"])
    tie = tie_parameter(raw, hp.tie_model)
    # Bradley-Terry treats a tie label as half a win for each side (see preference_loss).
    loss = jnp.mean(
      losses.preference_loss(
        r_a,
        r_b,
        batch["label"].reshape(-1),
        hp.tie_model,
        None if hp.tie_model == "bradley_terry" else tie,
      )
    )
    if hp.center_coef:
      loss = loss + jnp.mean(losses.reward_centering_loss(r_a, r_b, hp.center_coef))
    return loss, (r_a, r_b, tie)

  return pair_step(loss_fn, optimizer, preference_metrics)


def pair_step(loss_fn: Callable, optimizer, metrics_fn: Callable) -> Callable:
  """``step(state, batch, base=None) -> (state, metrics)`` for a loss over preference pairs,
  shared by the reward-model and DPO steps: ``loss_fn(params, batch, base) -> (loss, (r_a,
  r_b, tie))`` (``base``: the frozen LoRA base, an input of the step, or None)
  (``r_*`` ``[B]`` the two sides' rewards, ``tie`` the tie parameter), an update that is
  skipped (and counted in ``skipped_updates``) when the loss or gradient is not finite, and
  ``metrics_fn(r_a, r_b, label)`` plus ``loss``, ``grad_norm``, ``tie_param``,
  ``skipped_updates``. ``state`` has ``params``, ``opt_state``, ``step``,
  ``skipped_updates``."""
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step(state, batch: Dict[str, jax.Array], base: Any = None):
    (loss, (r_a, r_b, tie)), grads = grad_fn(state.params, batch, base)
    params, opt_state, finite, grad_norm = guarded_update(
      optimizer, state.params, state.opt_state, grads, loss
    )
    skipped = state.skipped_updates + (~finite).astype(jnp.int32)
    metrics = metrics_fn(r_a, r_b, batch["label"].reshape(-1))
    metrics.update(loss=loss, grad_norm=grad_norm, tie_param=tie, skipped_updates=skipped)
    return state.replace(
      params=params, opt_state=opt_state, step=state.step + 1, skipped_updates=skipped
    ), metrics

  return step


def make_pair_scorer(model: Transformer) -> Callable:
  """``scorer(model_params, batch) -> (r_a, r_b)`` for evaluation (jit it): ``[B]`` each for
  pair batches, ``[G, k(k-1)/2]`` for grouped ones."""
  return lambda params, batch: _pair_scores(model, params, batch)


def preference_metrics(r_a, r_b, label) -> Dict[str, jax.Array]:
  """Accuracy on decided pairs, mean margin and score statistics (device scalars)."""
  decided = (label != losses.LABEL_TIE).astype(jnp.float32)
  pred_a = r_a > r_b
  correct = jnp.where(label == losses.LABEL_A, pred_a, ~pred_a).astype(jnp.float32)
  n_decided = jnp.maximum(jnp.sum(decided), 1.0)
  return {
    "accuracy": jnp.sum(correct * decided) / n_decided,
    "margin": jnp.sum(jnp.abs(r_a - r_b) * decided) / n_decided,
    "score_mean": jnp.mean(jnp.concatenate([r_a, r_b])),
    "score_std": jnp.std(jnp.concatenate([r_a, r_b])),
  }
