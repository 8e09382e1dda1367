"""Direct preference optimisation (DPO, IPO, DPO with ties) as pure functions.

The policy is trained on preference pairs directly, without a reward model or rollouts:
its implicit reward of a response ``y`` to a prompt ``x`` is ``r(x, y) = β (log π_θ(y|x) -
log π_ref(y|x))`` (Rafailov et al. 2023), and the pair loss is
:func:`rlhf_jax.losses.dpo_loss` — the Bradley-Terry likelihood of the label under those
implicit rewards (``"sigmoid"``, DPO), the same with Rao-Kupper or Davidson ties (DPO with
ties: a tie label is most likely at equal implicit rewards), or IPO's squared loss
(Azar et al. 2023). ``label_smoothing`` gives conservative DPO.

Batches are the reward model's pair layout (:mod:`rlhf_jax.reward`): ``ids_a, mask_a,
ids_b, mask_b`` ``[B, S]`` (prompt left-padded in the first ``S - response_len`` columns,
response right-padded in the last ``response_len``) and ``label`` ``[B]`` (``LABEL_A=0``,
``LABEL_B=1``, ``LABEL_TIE=2``), plus the reference's summed response log-probs
``ref_logp_a, ref_logp_b`` ``[B]``. The reference never enters the train step: its
log-probs are data, computed once per dataset with :func:`make_pair_logprobs` on the
reference params (the reference is frozen, so they never change).

A response's log-prob is the sum over its real tokens (response mask 1, its EOS included) of
the token log-probs at temperature 1, accumulated in float32 whatever the compute dtype.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, Tuple

import flax.struct
import jax
import jax.numpy as jnp
import optax

from rlhf_jax import losses, ops
from rlhf_jax import reward as reward_lib
from rlhf_jax.lora import factored_params
from rlhf_jax.models import Transformer

__all__ = [
  "DPOHparams",
  "DPOState",
  "init_dpo_state",
  "dpo_optimizer",
  "sequence_logprobs",
  "make_pair_logprobs",
  "make_dpo_step",
  "dpo_metrics",
]

_TIE_MODELS = ("bradley_terry", "rao_kupper", "davidson")


@dataclasses.dataclass(frozen=True)
class DPOHparams:
  """Static DPO / IPO settings.

  ``beta`` is β of the implicit reward ``β (log π - log π_ref)``: the strength of the
  implicit KL regularisation towards the reference (smaller β lets the policy move further).
  For IPO, β sets the target log-ratio gap ``1 / (2β)`` of a decided pair.

  Ties: ``"bradley_terry"`` treats a tie label as half a win each way (its loss is minimal at
  equal implicit rewards); ``"rao_kupper"`` (``tie_param`` = θ ≥ 1) and ``"davidson"``
  (``tie_param`` = ν ≥ 0) model the tie outcome itself. The tie parameter is fixed unless
  ``learn_tie_param`` (then Adam at ``tie_learning_rate`` moves it, as in the reward model).
  IPO models ties natively (``h²``), so it takes neither a tie model nor label smoothing.
  """

  loss_type: str = "sigmoid"  # "sigmoid" (DPO) | "ipo"
  beta: float = 0.1
  label_smoothing: float = 0.0  # conservative DPO's ε in [0, 0.5); "sigmoid" only
  tie_model: str = "bradley_terry"  # "bradley_terry" | "rao_kupper" | "davidson"
  tie_param: float = 1.5  # θ >= 1 (Rao-Kupper) or ν >= 0 (Davidson); unused for BT
  learn_tie_param: bool = False
  tie_learning_rate: float = 0.05  # Adam learning rate of the (unconstrained) tie parameter

  def __post_init__(self):
    if self.loss_type not in losses.DPO_LOSS_TYPES:
      raise ValueError(
        f"DPOHparams.loss_type={self.loss_type!r}; expected one of {losses.DPO_LOSS_TYPES}"
      )
    if not (math.isfinite(self.beta) and self.beta > 0):
      raise ValueError(f"DPOHparams.beta={self.beta}: expected a finite value > 0")
    if not 0 <= self.label_smoothing < 0.5:
      raise ValueError(
        f"DPOHparams.label_smoothing={self.label_smoothing}: expected a value in [0, 0.5)"
      )
    if self.tie_model not in _TIE_MODELS:
      raise ValueError(f"DPOHparams.tie_model={self.tie_model!r}; expected one of {_TIE_MODELS}")
    if self.tie_model == "rao_kupper" and not self.tie_param >= 1:
      raise ValueError(f"DPOHparams.tie_param={self.tie_param}: Rao-Kupper needs theta >= 1")
    if self.tie_model == "davidson" and not self.tie_param >= 0:
      raise ValueError(f"DPOHparams.tie_param={self.tie_param}: Davidson needs nu >= 0")
    if self.loss_type == "ipo" and self.tie_model != "bradley_terry":
      raise ValueError(
        f"DPOHparams.tie_model={self.tie_model!r} with loss_type='ipo': IPO models ties "
        "itself (h² for a tie); use tie_model='bradley_terry'"
      )
    if self.loss_type == "ipo" and self.label_smoothing:
      raise ValueError(
        f"DPOHparams.label_smoothing={self.label_smoothing} with loss_type='ipo': label "
        "smoothing is conservative DPO's ('sigmoid' only); use 0"
      )
    if self.learn_tie_param and self.tie_model == "bradley_terry":
      raise ValueError(
        "DPOHparams.learn_tie_param=True with tie_model='bradley_terry': Bradley-Terry has "
        "no tie parameter; use 'rao_kupper' or 'davidson'"
      )
    if not self.tie_learning_rate >= 0:
      raise ValueError(f"DPOHparams.tie_learning_rate={self.tie_learning_rate}: expected >= 0")


class DPOState(flax.struct.PyTreeNode):
  """params: ``{"model": policy params, "tie": raw scalar}``; the tie parameter (θ or ν
  through :func:`rlhf_jax.reward.tie_parameter`) gets gradients only when
  ``learn_tie_param``."""

  params: Any
  opt_state: Any
  step: jax.Array
  skipped_updates: jax.Array


def dpo_optimizer(
  model_optimizer: optax.GradientTransformation, hp: DPOHparams
) -> optax.GradientTransformation:
  """``model_optimizer`` for the policy and Adam at ``hp.tie_learning_rate`` for the tie
  parameter (the reward model's split, :func:`rlhf_jax.reward.reward_optimizer`)."""
  return reward_lib.reward_optimizer(model_optimizer, hp)


def init_dpo_state(policy_params, optimizer: optax.GradientTransformation, hp: DPOHparams):
  """The initial state; ``optimizer`` is a :func:`dpo_optimizer`."""
  params = {
    "model": policy_params,
    "tie": jnp.asarray(reward_lib.raw_tie(hp.tie_param, hp.tie_model), jnp.float32),
  }
  return DPOState(
    params=params,
    opt_state=optimizer.init(params),
    step=jnp.zeros((), jnp.int32),
    skipped_updates=jnp.zeros((), jnp.int32),
  )


def sequence_logprobs(
  model: Transformer, params, ids_BS, mask_BS, response_len: int, temperature=1.0
) -> jax.Array:
  """Summed log-probs ``[B]`` of each row's response under ``model``.

  ``log π(y|x) = Σ_{t ≥ P} m_t log π(ids_t | ids_<t)`` with ``P = T - response_len`` and
  ``m`` the response part of ``mask_BS``. The LM head runs only on the positions that
  predict response tokens (``head_slice``); log-probs come from
  :func:`rlhf_jax.ops.token_logprobs` and are summed with :func:`rlhf_jax.ops.masked_sum`
  (float32 accumulation; padding never reaches the sum).
  """
  n = int(response_len)
  p = ids_BS.shape[1] - n
  if p < 1:
    raise ValueError(
      f"sequence_logprobs: rows of {ids_BS.shape[1]} tokens leave no prompt before a "
      f"response of {n}"
    )
  logits = model.apply({"params": params}, ids_BS, mask_BS, head_slice=(p - 1, p + n - 1))
  logp_BT = ops.token_logprobs(logits, ids_BS[:, p:], temperature)
  return ops.masked_sum(logp_BT, mask_BS[:, p:], axis=1)


def _pair_logprobs(model, params, batch, response_len) -> Tuple[jax.Array, jax.Array]:
  """Both sides of every pair in one forward pass over ``[2B, T]``."""
  ids = jnp.concatenate([batch["ids_a"], batch["ids_b"]], axis=0)
  mask = jnp.concatenate([batch["mask_a"], batch["mask_b"]], axis=0)
  logp = sequence_logprobs(model, params, ids, mask, response_len)
  b = batch["ids_a"].shape[0]
  return logp[:b], logp[b:]


def make_pair_logprobs(model: Transformer, response_len: int) -> Callable:
  """``fn(params, batch) -> (logp_a [B], logp_b [B])``: summed response log-probs of both
  sides (jit it). On the reference params, once per dataset, it gives the train step's
  ``ref_logp_a`` / ``ref_logp_b``."""
  _check_lm(model)
  return lambda params, batch: _pair_logprobs(model, params, batch, response_len)


def _check_lm(model: Transformer) -> None:
  if model.cfg.head != "lm":
    raise ValueError(f"DPO trains a language model (head='lm'), got head={model.cfg.head!r}")


def make_dpo_step(
  model: Transformer,
  optimizer: optax.GradientTransformation,
  hp: DPOHparams,
  response_len: int,
) -> Callable:
  """``step(state, batch, base=None) -> (state, metrics)``: one DPO / IPO update on a batch of
  pairs. ``state.params["model"]`` is the policy's params, or LoRA adapters
  (:class:`rlhf_jax.lora.LoraParams`) on the frozen ``base`` (a step input; the reference is
  then usually that base, adapters off).

  ``batch`` holds the pairs and the reference's ``ref_logp_a`` / ``ref_logp_b`` ``[B]``
  (inputs: the step never runs the reference). The loss is the mean of
  :func:`rlhf_jax.losses.dpo_loss` over the pairs; an update whose loss or gradient is not
  finite is skipped (:func:`rlhf_jax.update.guarded_update`) and counted in
  ``skipped_updates``. Jit it with the state donated (``sharding.jit_step``).

  Metrics (device scalars): ``loss``, ``accuracy`` (decided pairs whose preferred response
  has the larger implicit reward), ``reward_margin`` (mean implicit reward of the preferred
  minus the rejected response, decided pairs), ``chosen_reward``, ``rejected_reward``,
  ``tie_reward_gap`` (mean ``|r_a - r_b|`` over tie labels, 0 without ties), ``tie_param``
  (θ, ν, or 1 for Bradley-Terry), ``grad_norm``, ``skipped_updates``.
  """
  _check_lm(model)
  bt = hp.tie_model == "bradley_terry"

  def loss_fn(params, batch, base):
    policy = factored_params(params["model"], base)
    logp_a, logp_b = _pair_logprobs(model, policy, batch, response_len)
    raw = params["tie"] if hp.learn_tie_param else jax.lax.stop_gradient(params["tie"])
    tie = reward_lib.tie_parameter(raw, hp.tie_model)
    loss_B = losses.dpo_loss(
      logp_a,
      logp_b,
      batch["ref_logp_a"],
      batch["ref_logp_b"],
      batch["label"],
      hp.beta,
      loss_type=hp.loss_type,
      tie_model=hp.tie_model,
      tie_param=None if bt else tie,
      label_smoothing=hp.label_smoothing,
    )
    r_a = hp.beta * (logp_a - batch["ref_logp_a"])
    r_b = hp.beta * (logp_b - batch["ref_logp_b"])
    return jnp.mean(loss_B), (jax.lax.stop_gradient(r_a), jax.lax.stop_gradient(r_b), tie)

  return reward_lib.pair_step(loss_fn, optimizer, dpo_metrics)


def dpo_metrics(r_a, r_b, label) -> Dict[str, jax.Array]:
  """Statistics of the implicit rewards ``r_a, r_b`` ``[B]`` against the labels: accuracy,
  signed margin, chosen / rejected means (decided pairs) and the gap on tie labels."""
  decided = label != losses.LABEL_TIE
  a_wins = label == losses.LABEL_A
  chosen = jnp.where(a_wins, r_a, r_b)
  rejected = jnp.where(a_wins, r_b, r_a)
  return {
    "accuracy": ops.masked_mean((chosen > rejected).astype(jnp.float32), decided),
    "reward_margin": ops.masked_mean(chosen - rejected, decided),
    "chosen_reward": ops.masked_mean(chosen, decided),
    "rejected_reward": ops.masked_mean(rejected, decided),
    "tie_reward_gap": ops.masked_mean(jnp.abs(r_a - r_b), ~decided),
  }
