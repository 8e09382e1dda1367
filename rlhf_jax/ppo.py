"""PPO-family RLHF as pure functions: one iteration = rollout, scoring, advantages, K×M updates.

``make_ppo_iteration(...)`` returns a function ``iteration(state, frozen, prompt_ids_BP,
prompt_mask_BP) -> (state, metrics)`` that is meant to be jitted whole (with the state
donated): sampling, the reference / value / reward forward passes, reward shaping with the
KL penalty, GAE, whitening and ``epochs × num_minibatches`` clipped policy + value updates
(nested ``lax.scan``) all run in one XLA program. Everything that changes between
iterations — KL coefficient, learning rate (an optax schedule on the step count), RNG — is
in the state as arrays, so nothing recompiles after the first iteration.

Shapes: B rollouts, P prompt length (left-padded), T response length, V vocabulary,
b = B // num_minibatches.

Roles (one module definition each, see ``rlhf_jax.models``):

* policy: ``Transformer`` with ``head="lm"`` (separate value model) or ``head="both"``
  (value head on the policy trunk, ``shared_trunk=True``);
* value: ``Transformer`` with ``head="scalar"`` (unused when the trunk is shared);
* reference: the policy's module definition with frozen params (LM head only);
* reward: ``Transformer`` with ``head="scalar"``, frozen, read at the last real token and
  normalised by a gain and bias fitted on reference samples — or any ``score_fn`` (see
  :func:`make_ppo_iteration`), e.g. a host-side text scorer through
  :func:`host_scorer_score_fn` (verifiable-reward RL, RLVR), normalised the same way.

The LM head runs only on the response positions (``head_slice``), log-probs come from a
fused log-softmax gather (:func:`rlhf_jax.ops.token_logprobs`).

One skeleton, five algorithms (``PPOHparams.algorithm``). They differ only in how the
advantages are estimated and which terms the loss has; both are chosen once, as functions,
when the iteration is built, and the rollout, scoring, minibatch scan and update are one path:

=============  ==========================================  =====================  ==========
algorithm      advantage                                   KL (default)           reduction
=============  ==========================================  =====================  ==========
ppo            GAE with a critic, whitened                 β·k per token, reward  token
grpo           (r - mean_g) / (std_g + eps) per group      β·k3 loss term         sequence
dr_grpo        r - mean_g per group                        β·k3 loss term         constant
rloo           r - mean of the other G-1 of the group      β·k per token, reward  token
reinforce_pp   Σ_{s≥t} γ^{s-t} r_s (KL-shaped), whitened   β·k per token, reward  token
=============  ==========================================  =====================  ==========

For the group methods ``r`` is the response's total reward: its score, minus ``β·Σ_t k_t``
when the KL is a reward penalty. The critic-free algorithms (all but ``ppo``) take
``value_model=None`` and ``params={"policy": ...}``. With ``group_size = G`` each prompt is
sampled ``G`` times inside the iteration: a batch of ``B`` prompts gives ``B·G`` rollouts,
rows ``g·G … g·G + G - 1`` being prompt ``g``'s samples.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Optional, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlhf_jax import advantages as adv_lib
from rlhf_jax import generation, losses, ops
from rlhf_jax import kl as kl_lib
from rlhf_jax import reward as reward_lib
from rlhf_jax.lora import LoraParams, factored_params, full_params
from rlhf_jax.models import Transformer
from rlhf_jax.models.transformer import unstack_layers
from rlhf_jax.update import guarded_update

__all__ = [
  "PPOHparams",
  "PPOState",
  "PPOFrozen",
  "Rollout",
  "Scored",
  "make_sample_and_score",
  "ScoreFn",
  "reward_model_score_fn",
  "host_scorer_score_fn",
  "sample_responses",
  "init_ppo_state",
  "init_value_from_reward",
  "truncate_at_stop",
  "make_ppo_iteration",
  "ALGORITHMS",
  "CRITIC_FREE_ALGORITHMS",
  "GROUP_ALGORITHMS",
  "PREFERENCE_ALGORITHMS",
]

ALGORITHMS = ("ppo", "grpo", "dr_grpo", "rloo", "reinforce_pp")
CRITIC_FREE_ALGORITHMS = ("grpo", "dr_grpo", "rloo", "reinforce_pp")
GROUP_ALGORITHMS = ("grpo", "dr_grpo", "rloo")
# Selected by the same field but trained from preference pairs, not rollouts: DPO and IPO
# (rlhf_jax.dpo; the pipeline's policy stage). make_ppo_iteration refuses them; the sampling
# settings of PPOHparams (response_len, temperature, stop token) still apply to them.
PREFERENCE_ALGORITHMS = ("dpo", "ipo")
# The papers' choices, used where PPOHparams leaves kl_in_loss / loss_reduction as None.
_DEFAULT_KL_IN_LOSS = {
  "ppo": False,
  "grpo": True,
  "dr_grpo": True,
  "rloo": False,
  "reinforce_pp": False,
  "dpo": False,
  "ipo": False,
}
_DEFAULT_REDUCTION = {
  "ppo": "token",
  "grpo": "sequence",
  "dr_grpo": "constant",
  "rloo": "token",
  "reinforce_pp": "token",
  "dpo": "token",
  "ipo": "token",
}


@dataclasses.dataclass(frozen=True)
class PPOHparams:
  """Static PPO settings (shapes and choices); values that vary live in ``PPOState``.

  The defaults are lm-human-preferences' (Ziegler et al. 2019) sentiment settings where a
  setting exists there (temperature 0.7, 4 epochs, clip 0.2 for policy and value, c_v 0.1,
  γ 1, λ 0.95, adaptive KL to 6 nats with horizon 10 000, biased whitening), and differ
  from that run in these ways (``configs/sentiment.py:openai`` sets all of them to OAI's):

  * ``shared_trunk=False``: a separate value model; OAI puts the value head on the policy
    trunk (``shared_trunk=True``).
  * ``whiten_rewards=False``; OAI whitens the shaped rewards (without shifting the mean)
    before GAE. OAI whitens rewards and advantages over each minibatch, this code over the
    whole rollout batch; the two agree for ``num_minibatches=1`` (OAI's sentiment run).
  * ``response_len=24`` and no stop token; OAI truncates at '.' found at a response index
    ``>= truncate_after`` (16). Here the first stop token at index ``>= min_response_len - 1``
    ends the response, so ``min_response_len = truncate_after + 1`` (17) reproduces OAI.
  * ``missing_stop="none"``; OAI replaces the score of a response without the stop token
    by -1 (``missing_stop="replace"``, ``missing_stop_score=-1``).
  * batch size and minibatches are the trainer's (OAI: 512 rollouts, 1 minibatch).

  Sampling for PPO is plain temperature sampling: ``top_k`` and ``top_p`` must stay off,
  because the sampler's log-probs (and a recomputed ``log π_old``) are those of the full
  temperature-scaled distribution; truncated sampling would bias the ratio and the KL.

  Critic-free algorithms (``algorithm`` other than ``"ppo"``, see the module docstring):

  * ``group_size``: samples per prompt, drawn inside the iteration (``>= 2`` for the group
    methods grpo / dr_grpo / rloo; ppo and reinforce_pp may also take several).
  * ``kl_in_loss``: the KL as a loss term ``β · reduce(k(π_θ, π_ref))`` with the estimator
    ``kl_loss_estimator`` (GRPO's k3) instead of the per-token reward penalty
    ``-β · k(π_old, π_ref)`` (``kl_estimator``). β is the KL controller's ``state.kl.beta``
    wherever the KL goes (an array: changing it never recompiles; ``adaptive_kl`` drives
    either placement, ``init_kl_coef = 0`` turns the KL off). ``None``: the algorithm's
    (True for grpo / dr_grpo).
  * ``loss_reduction``: ``"token"``, ``"sequence"`` or ``"constant"``
    (:func:`rlhf_jax.losses.ppo_policy_loss`), also used for the KL loss term. ``None``: the
    algorithm's (token for ppo / rloo / reinforce_pp, sequence for grpo, constant for
    dr_grpo).
  * ``clip_eps_high``: DAPO's upper clip (``None``: ``clip_eps``). DAPO is
    ``algorithm="grpo", loss_reduction="token", clip_eps_high=0.28``, β = 0.

  Only ``ppo`` uses ``lam``, ``whiten_rewards``, ``value_clip_eps``, ``vf_coef`` and
  ``shared_trunk``; ``whiten_advantages`` applies to ppo and reinforce_pp (batch whitening of
  token advantages) and not to the group methods, whose advantages are already relative to
  their group.
  """

  response_len: int = 24
  num_minibatches: int = 1
  epochs: int = 4
  temperature: float = 0.7
  top_k: int = 0  # must be 0 for PPO (see the class docstring)
  top_p: float = 1.0  # must be 1.0 for PPO
  eos_id: int = 0
  pad_id: int = 1
  stop_token_id: Optional[int] = None  # truncate after this token (e.g. '.') ...
  min_response_len: int = 0  # ... found at response index >= min_response_len - 1
  missing_stop: str = "none"  # "none" | "replace" (OAI) | "penalty" (TRL)
  missing_stop_score: float = -1.0  # "replace": the score of a response without a stop
  missing_stop_penalty: float = 1.0  # "penalty": subtracted from it (>= 0, TRL's sign)
  kl_estimator: str = "k1"
  adaptive_kl: bool = True
  kl_target: float = 6.0  # nats per response (batch mean of per-sequence k1 sums)
  kl_horizon: float = 10000.0
  gamma: float = 1.0
  lam: float = 0.95
  clip_eps: float = 0.2
  value_clip_eps: Optional[float] = 0.2
  vf_coef: float = 0.1
  whiten_rewards: bool = False
  whiten_advantages: bool = True
  unbiased_whitening: bool = False  # OAI: biased variance; TRL: unbiased
  shared_trunk: bool = False
  # log π_old: False reuses the sampler's log-probs, True recomputes them with a full forward
  # pass; None (default) recomputes when the policy computes (``dtype``) or multiplies
  # (``matmul_dtype``) in a dtype other than float32 (bfloat16 sampler log-probs differ from a
  # full forward by up to ~0.025 nats per token).
  recompute_old_logprobs: Optional[bool] = None
  # "ppo" | "grpo" | "dr_grpo" | "rloo" | "reinforce_pp"; "dpo" | "ipo" (preference pairs)
  algorithm: str = "ppo"
  group_size: int = 1  # samples per prompt (rows g*G ... g*G+G-1 are one prompt's)
  kl_in_loss: Optional[bool] = None  # None: the algorithm's (grpo, dr_grpo: True)
  kl_loss_estimator: str = "k3"  # the KL loss term's estimator (kl_in_loss)
  clip_eps_high: Optional[float] = None  # DAPO clip-higher; None: clip_eps
  loss_reduction: Optional[str] = None  # None: the algorithm's (see the class docstring)

  def __post_init__(self):
    if self.algorithm not in ALGORITHMS + PREFERENCE_ALGORITHMS:
      raise ValueError(
        f"PPOHparams.algorithm={self.algorithm!r}; expected one of "
        f"{ALGORITHMS + PREFERENCE_ALGORITHMS}"
      )
    if self.algorithm in PREFERENCE_ALGORITHMS and self.shared_trunk:
      raise ValueError(
        f"PPOHparams.shared_trunk=True with algorithm={self.algorithm!r}: DPO / IPO train "
        "the policy alone (no value head); use shared_trunk=False"
      )
    if self.algorithm in PREFERENCE_ALGORITHMS and self.group_size != 1:
      raise ValueError(
        f"PPOHparams.group_size={self.group_size} with algorithm={self.algorithm!r}: DPO / "
        "IPO learn from the round's labelled pairs, not from groups of samples; use 1"
      )
    if self.group_size < 1:
      raise ValueError(f"PPOHparams.group_size must be >= 1, got {self.group_size}")
    if self.algorithm in GROUP_ALGORITHMS and self.group_size < 2:
      raise ValueError(
        f"PPOHparams.group_size={self.group_size} with algorithm={self.algorithm!r}: a group "
        "method's baseline is the other samples of the same prompt, so it needs "
        "group_size >= 2 samples per prompt"
      )
    if self.algorithm in CRITIC_FREE_ALGORITHMS and self.shared_trunk:
      raise ValueError(
        f"PPOHparams.shared_trunk=True with algorithm={self.algorithm!r}: "
        "critic-free algorithms have no value head; use shared_trunk=False"
      )
    if self.loss_reduction is not None and self.loss_reduction not in losses.POLICY_LOSS_REDUCTIONS:
      raise ValueError(
        f"PPOHparams.loss_reduction={self.loss_reduction!r}; expected None or "
        f"one of {losses.POLICY_LOSS_REDUCTIONS}"
      )
    if self.kl_loss_estimator not in kl_lib.ESTIMATORS:
      raise ValueError(
        f"PPOHparams.kl_loss_estimator={self.kl_loss_estimator!r}; expected "
        f"one of {kl_lib.ESTIMATORS}"
      )
    if self.clip_eps_high is not None and self.clip_eps_high < 0:
      raise ValueError(
        f"PPOHparams.clip_eps_high={self.clip_eps_high}: expected None or "
        ">= 0 (the ratio is clipped to [1 - clip_eps, 1 + clip_eps_high])"
      )
    if self.missing_stop not in ("none", "replace", "penalty"):
      raise ValueError(
        f"PPOHparams.missing_stop={self.missing_stop!r}; expected 'none', 'replace' or 'penalty'"
      )
    if self.missing_stop_penalty < 0:
      raise ValueError(
        f"PPOHparams.missing_stop_penalty={self.missing_stop_penalty}: the "
        "penalty is subtracted from the score of a response without a stop "
        "token, so it must be >= 0"
      )
    if self.kl_estimator not in kl_lib.ESTIMATORS:
      raise ValueError(
        f"PPOHparams.kl_estimator={self.kl_estimator!r}; expected one of {kl_lib.ESTIMATORS}"
      )
    for name in ("response_len", "num_minibatches", "epochs"):
      if getattr(self, name) < 1:
        raise ValueError(f"PPOHparams.{name} must be >= 1, got {getattr(self, name)}")
    if self.temperature <= 0:
      raise ValueError(
        f"PPOHparams.temperature must be > 0 for RL sampling, got {self.temperature}"
      )
    if self.top_k != 0 or self.top_p != 1.0:
      raise ValueError(
        f"PPOHparams.top_k={self.top_k}, top_p={self.top_p}: PPO samples from the full "
        "temperature-scaled distribution (top_k=0, top_p=1.0). The ratio π/π_old and the "
        "KL penalty use log-probs of that distribution; top-k/top-p sampling draws from a "
        "truncated one, which biases both (and can make the KL negative)"
      )

  @property
  def critic_free(self) -> bool:
    """Whether the algorithm has no value model (all but ``"ppo"``)."""
    return self.algorithm in CRITIC_FREE_ALGORITHMS

  @property
  def kl_in_loss_resolved(self) -> bool:
    """``kl_in_loss``, or the algorithm's default when it is None."""
    return _DEFAULT_KL_IN_LOSS[self.algorithm] if self.kl_in_loss is None else self.kl_in_loss

  @property
  def loss_reduction_resolved(self) -> str:
    """``loss_reduction``, or the algorithm's default when it is None."""
    if self.loss_reduction is None:
      return _DEFAULT_REDUCTION[self.algorithm]
    return self.loss_reduction

  @property
  def missing_stop_value(self) -> Optional[float]:
    """The value :func:`rlhf_jax.advantages.shape_rewards` takes for ``missing_stop``."""
    return {"none": None, "replace": self.missing_stop_score, "penalty": self.missing_stop_penalty}[
      self.missing_stop
    ]

  def recomputes_old_logprobs(self, compute_dtype: str) -> bool:
    """Whether ``log π_old`` comes from a full forward pass for a policy in ``compute_dtype``."""
    if self.recompute_old_logprobs is None:
      return jnp.dtype(compute_dtype) != jnp.float32
    return bool(self.recompute_old_logprobs)


class PPOState(flax.struct.PyTreeNode):
  """Everything that changes during PPO, as one pytree.

  params: ``{"policy": ..., "value": ...}`` (or only ``"policy"`` with a shared trunk or a
    critic-free algorithm): each the role's params, or LoRA adapters (+ a value head) on the
    frozen base ``PPOFrozen.ref_params`` (:class:`rlhf_jax.lora.LoraParams`).
  opt_state: optax state over ``params``.
  kl: ``KLControllerState`` (β, the KL coefficient: reward penalty or loss term).
  rng: raw ``uint32[2]`` PRNG key; each iteration folds in ``step``.
  step: iteration counter (int32).
  skipped_updates: number of minibatch updates skipped for a non-finite loss or gradient.
  """

  params: Any
  opt_state: Any
  kl: kl_lib.KLControllerState
  rng: jax.Array
  step: jax.Array
  skipped_updates: jax.Array


class PPOFrozen(NamedTuple):
  """Frozen inputs of an iteration: reference and reward params, reward normalisation.

  ``reward_params`` is whatever the iteration's ``score_fn`` reads (the reward model's
  params by default); None when the score comes from elsewhere (a host scorer).

  LoRA: the reference policy is the base with adapters off, so ``ref_params`` is also the
  frozen base that every :class:`rlhf_jax.lora.LoraParams` of the state (policy, value) and a
  LoRA ``reward_params`` (adapters + score head) are merged onto — one copy of the weights.
  """

  ref_params: Any
  reward_params: Any
  reward_gain: jax.Array
  reward_bias: jax.Array


class Rollout(NamedTuple):
  """A scored batch of responses, the data of the update epochs. Shape suffixes: ``B``
  rollouts, ``T`` response tokens, ``S = P + T`` prompt and response tokens.

  ``values_old_BT`` and ``returns_BT`` are None for critic-free algorithms; ``logp_ref_BT`` is
  kept only when the KL is a loss term. Group advantages (one per response) are broadcast over
  the response tokens (0 on padding).
  """

  seq_ids_BS: jax.Array  # prompt (left-padded) + response (PAD after the end)
  seq_mask_BS: jax.Array  # 1 on real prompt and response tokens
  response_mask_BT: jax.Array  # 1 on real response tokens
  logp_old_BT: jax.Array  # log-probs of the sampled tokens under the policy that sampled them
  values_old_BT: Optional[jax.Array]  # value estimates at sampling time
  advantages_BT: jax.Array  # (whitened) advantages
  returns_BT: Optional[jax.Array]  # value targets
  logp_ref_BT: Optional[jax.Array] = None  # log-probs under the reference policy


def init_ppo_state(
  params, optimizer: optax.GradientTransformation, init_kl_coef: float, rng: jax.Array
) -> PPOState:
  """Initial PPO state; ``rng`` is a raw uint32 key (``jax.random.PRNGKey``)."""
  return PPOState(
    params=params,
    opt_state=optimizer.init(params),
    kl=kl_lib.adaptive_kl_init(jnp.asarray(init_kl_coef, jnp.float32)),
    rng=rng,
    step=jnp.zeros((), jnp.int32),
    skipped_updates=jnp.zeros((), jnp.int32),
  )


def init_value_from_reward(
  reward_model: Transformer, reward_params, reward_gain, reward_bias, head: str = "reward"
):
  """The value model and its params, started from the reward model.

  PPO's returns are in normalised reward units, ``gain · r + bias`` (mean 0, std 1 on
  reference samples, :func:`rlhf_jax.advantages.fit_reward_normalization`). The value model
  is the reward model's module with a bias on its scalar head (``scalar_bias=True``); with
  ``head="reward"`` the head is ``gain · w`` and its bias ``gain · b + bias`` (``b = 0`` for a
  head without one), so the value model's first predictions are exactly the normalised
  reward of each prefix — at the last response token, the score PPO is trained on.
  ``head="zero"`` keeps the reward trunk and zeroes the head (value 0 everywhere).

  Returns ``(value_model, value_params)``; the params are fresh arrays (the caller's
  ``reward_params`` may be donated or kept frozen independently). A LoRA reward model
  (:class:`rlhf_jax.lora.LoraParams`: adapters + score head) gives a LoRA value model on the
  same base: its adapters copied, its head transformed as above.
  """
  if head not in ("reward", "zero"):
    raise ValueError(f"value init head={head!r}; expected 'reward' or 'zero'")
  if reward_model.cfg.head != "scalar":
    raise ValueError(
      f"the value model starts from a scalar-head model, got head={reward_model.cfg.head!r}"
    )
  value_model = Transformer(reward_model.cfg.replace(scalar_bias=True))
  if isinstance(reward_params, LoraParams):  # adapters + head: the same transform on the head
    head_params = init_value_from_reward(
      reward_model, reward_params.dense, reward_gain, reward_bias, head
    )[1]
    adapters = jax.tree.map(jnp.copy, reward_params.adapters)
    return value_model, reward_params.replace(adapters=adapters, dense=head_params)
  params = jax.tree.map(jnp.copy, dict(reward_params))
  kernel = params["score"]["kernel"]
  old_bias = params["score"].get("bias", jnp.zeros(kernel.shape[-1:], kernel.dtype))
  gain = jnp.asarray(reward_gain, kernel.dtype)
  if head == "zero":
    params["score"] = {"kernel": jnp.zeros_like(kernel), "bias": jnp.zeros_like(old_bias)}
  else:
    params["score"] = {
      "kernel": kernel * gain,
      "bias": old_bias * gain + jnp.asarray(reward_bias, kernel.dtype),
    }
  return value_model, params


def truncate_at_stop(tokens_BT, mask_BT, stop_token_id, min_len, pad_id):
  """Cut each response after its first ``stop_token_id`` at index ``>= min_len - 1``.

  OAI truncates sentiment continuations at '.' once they are at least ``min_len`` tokens
  long; tokens after the cut become PAD and leave the mask. Returns ``(tokens, mask,
  has_stop_B)`` where ``has_stop_B`` says whether the row ended by the stop token.
  """
  n = tokens_BT.shape[1]
  idx_T = jnp.arange(n)
  is_stop_BT = (tokens_BT == stop_token_id) & (idx_T[None] >= min_len - 1) & (mask_BT > 0)
  has_stop_B = jnp.any(is_stop_BT, axis=1)
  first_B = jnp.where(has_stop_B, jnp.argmax(is_stop_BT, axis=1), n)
  keep_BT = idx_T[None] <= first_B[:, None]
  mask_BT = mask_BT * keep_BT.astype(mask_BT.dtype)
  tokens_BT = jnp.where(mask_BT > 0, tokens_BT, pad_id)
  return tokens_BT, mask_BT, has_stop_B


class Scored(NamedTuple):
  """Sampled responses with their reward-model scores. Shape suffixes: ``B`` responses, ``T``
  response tokens, ``S = P + T`` prompt and response tokens."""

  tokens_BT: jax.Array  # response tokens, PAD after the end
  mask_BT: jax.Array  # 1 on real response tokens
  logprobs_BT: jax.Array  # sampler log-probs (temperature-scaled distribution)
  has_stop_B: jax.Array  # ended with EOS or was truncated at the stop token
  seq_ids_BS: jax.Array  # prompt (left-padded) + response
  seq_mask_BS: jax.Array  # 1 on real prompt and response tokens
  raw_score_B: jax.Array  # reward model at the last real token, before normalisation


def sample_responses(
  policy_model: Transformer, hp: PPOHparams, params, prompt_ids, prompt_mask, rng, temperature=None
):
  """Sample (and stop-token truncate) responses; ``temperature`` overrides ``hp.temperature``
  (it may be traced)."""
  sample = generation.sample_fn(
    generation.make_apply_fn(policy_model),
    unstack_layers(params),
    policy_model.cfg,
    prompt_ids,
    prompt_mask,
    rng,
    max_new_tokens=hp.response_len,
    eos_id=hp.eos_id,
    pad_id=hp.pad_id,
    top_k=hp.top_k,
    temperature=jnp.asarray(hp.temperature if temperature is None else temperature, jnp.float32),
    top_p=jnp.asarray(hp.top_p, jnp.float32),
  )
  tokens, mask = sample.tokens_BT, sample.mask_BT.astype(jnp.int32)
  has_stop = sample.ended_B
  if hp.stop_token_id is not None:
    tokens, mask, stopped = truncate_at_stop(
      tokens, mask, hp.stop_token_id, hp.min_response_len, hp.pad_id
    )
    has_stop = has_stop | stopped
  return tokens, mask, sample.logprobs_BT, has_stop


# ``score_fn(reward_params, seq_ids_BT, seq_mask_BT, prompt_len) -> raw_score_B`` (float32):
# the score of each whole sequence (left-padded prompt of ``prompt_len`` columns, then the
# response, PAD with mask 0 after its end), before the normalisation ``gain · s + bias``.
# ``reward_params`` is ``PPOFrozen.reward_params`` (None if the score needs none);
# ``prompt_len`` is a static Python int. It is traced inside the iteration's jit.
ScoreFn = Callable[[Any, jax.Array, jax.Array, int], jax.Array]


def reward_model_score_fn(reward_model: Transformer) -> ScoreFn:
  """The default ``score_fn``: the reward model's scalar head at each row's last real token."""

  def score_fn(reward_params, seq_ids, seq_mask, prompt_len):
    del prompt_len
    return reward_lib.score_sequences(reward_model, reward_params, seq_ids, seq_mask)

  return score_fn


def host_scorer_score_fn(
  scorer: Callable[[Sequence[Any], Sequence[Any]], Any],
  decode: Callable[[np.ndarray, np.ndarray], Sequence[Any]],
  name: str = "scorer",
) -> ScoreFn:
  """A ``score_fn`` that scores the text on the host: verifiable-reward RL (RLVR).

  ``decode(ids_BL, mask_BL) -> list`` (numpy in, one item per row; the masked-out columns
  must be dropped, e.g. ``functools.partial(pipeline.decode_responses, tokenizer)``) turns
  the prompt columns and the response columns into texts; ``scorer(prompts, responses)``
  (the :mod:`rlhf_jax.feedback.scorers` protocol) returns one number per row, given back to
  the program as float32 ``[B]``.

  The call is a :func:`jax.pure_callback` with a fixed result shape, so the iteration stays
  one jitted program and compiles once; the scorer must be deterministic (XLA may call a
  pure callback again or drop an unused one). ``name`` appears in its errors.

  Placement: under ``jit`` with automatic sharding (the trainers' mesh), XLA gathers the
  whole batch to the program's first device and calls the scorer once, on that device's
  host, with the global batch; the scores are broadcast back. In a multi-process run this
  is process 0's host (the scorer and tokenizer must load there; every process builds the
  same program). Under ``vmap`` the scorer is called once per mapped element
  (``vmap_method="sequential"``); inside a ``shard_map`` with manual axes, once per device
  on its shard. The callback blocks the device while the host scores: a slow scorer is
  the iteration's critical path.
  """

  def host(seq_ids, seq_mask, prompt_len):
    ids, mask = np.asarray(seq_ids), np.asarray(seq_mask)
    prompts = decode(ids[:, :prompt_len], mask[:, :prompt_len])
    responses = decode(ids[:, prompt_len:], mask[:, prompt_len:])
    out = np.asarray(scorer(list(prompts), list(responses)), np.float32)
    if out.shape != (len(ids),):
      raise ValueError(
        f"{name}: a scorer returns one number per response; got shape {list(out.shape)} "
        f"for {len(ids)} responses"
      )
    if not np.all(np.isfinite(out)):
      raise ValueError(f"{name}: returned non-finite scores {out[~np.isfinite(out)][:4]}")
    return out

  def score_fn(reward_params, seq_ids, seq_mask, prompt_len):
    del reward_params
    return jax.pure_callback(
      functools.partial(host, prompt_len=int(prompt_len)),
      jax.ShapeDtypeStruct(seq_ids.shape[:1], jnp.float32),
      seq_ids,
      seq_mask,
      vmap_method="sequential",
    )

  return score_fn


def _resolve_score_fn(reward_model: Optional[Transformer], score_fn: Optional[ScoreFn]) -> ScoreFn:
  if score_fn is not None:
    return score_fn
  if reward_model is None:
    raise ValueError("reward_model=None needs a score_fn (e.g. host_scorer_score_fn)")
  return reward_model_score_fn(reward_model)


def make_sample_and_score(
  policy_model: Transformer,
  reward_model: Optional[Transformer],
  hp: PPOHparams,
  score_fn: Optional[ScoreFn] = None,
) -> Callable:
  """``fn(policy_params, reward_params, prompt_ids, prompt_mask, rng) -> Scored``.

  The rollout half of an iteration on its own: used to fit the reward normalisation on
  reference samples and to evaluate policies. ``score_fn`` as in :func:`make_ppo_iteration`
  (default: ``reward_model``'s score).
  """
  score = _resolve_score_fn(reward_model, score_fn)

  def fn(policy_params, reward_params, prompt_ids, prompt_mask, rng):
    tokens, mask, logprobs, has_stop = sample_responses(
      policy_model, hp, policy_params, prompt_ids, prompt_mask, rng
    )
    seq_ids = jnp.concatenate([prompt_ids, tokens], axis=1)
    seq_mask = jnp.concatenate([prompt_mask.astype(jnp.int32), mask], axis=1)
    raw = score(reward_params, seq_ids, seq_mask, prompt_ids.shape[1])
    return Scored(tokens, mask, logprobs, has_stop, seq_ids, seq_mask, raw)

  return fn


class _UpdateCarry(NamedTuple):
  """What the minibatch scan threads through the update epochs."""

  params: Any
  opt_state: Any
  skipped: jax.Array  # int32: minibatch updates skipped for a non-finite loss or gradient


class _Forward(NamedTuple):
  """The policy's (and critic's) outputs on a minibatch, what the loss terms read."""

  logp: jax.Array  # [b, T] log-probs of the rollout tokens under the current policy
  values: Optional[jax.Array]  # [b, T]; None without a critic


def _identity(x, mask):
  del mask
  return x


def _token_reduction(reduction: str) -> Callable:
  """``reduce(x_BT, mask_BT) -> scalar``, the reduction of ``ppo_policy_loss(reduction=)``."""
  if reduction == "token":
    return ops.masked_mean
  if reduction == "sequence":

    def reduce(x, mask):
      nonempty = jnp.any(jnp.asarray(mask) != 0, axis=-1)
      return ops.masked_mean(ops.masked_mean(x, mask, axis=-1), nonempty)

    return reduce

  def reduce_constant(x, mask):
    return ops.masked_sum(x, mask) / jnp.asarray(max(x.size, 1), ops.acc_dtype(x))

  return reduce_constant


def make_ppo_iteration(
  policy_model: Transformer,
  value_model: Optional[Transformer],
  reward_model: Optional[Transformer],
  optimizer: optax.GradientTransformation,
  hp: PPOHparams,
  phases: bool = False,
  score_fn: Optional[ScoreFn] = None,
) -> Callable:
  """Build ``iteration(state, frozen, prompt_ids_BP, prompt_mask_BP) -> (state, metrics)``.

  The returned function is pure; jit it (``jax.jit(it, donate_argnums=0)``). ``metrics`` is
  a dict of scalar arrays (kept on device). With ``phases=True`` the two halves are returned
  instead, ``(rollout_phase, update_phase)`` — ``rollout_phase(state, frozen, ids, mask) ->
  (rollout, stats, observed_kl)`` and ``update_phase(state, rollout, stats, observed_kl,
  base=None) -> (state, metrics)`` (``base``: ``frozen.ref_params`` under LoRA) — for
  profiling each separately.

  ``hp.algorithm`` picks PPO (``value_model`` given, or ``shared_trunk``) or a critic-free
  algorithm (``value_model=None``, ``state.params = {"policy": ...}``); see the module
  docstring. With ``hp.group_size = G`` the ``B`` prompts are each sampled ``G`` times, so
  the rollout has ``B·G`` rows (``B·G`` must divide by ``num_minibatches``).

  Every choice the hyper-parameters make (the advantage estimator: GAE with a critic, group
  statistics or whitened returns-to-go; where the KL goes: reward penalty or loss term; value
  head on the policy trunk or a separate value model; where ``log π_old`` comes from; reward
  and advantage whitening; the loss reduction; the KL controller) is made here, once, as a
  choice of function; the iteration below reads rollout → score → shaped rewards →
  advantages → updates with no branches on ``hp``.

  The score: ``score_fn(reward_params, seq_ids_BT, seq_mask_BT, prompt_len) -> raw_B``
  (:data:`ScoreFn`; ``reward_params`` is ``frozen.reward_params``, ``prompt_len`` a static
  int), normalised by ``frozen.reward_gain`` / ``reward_bias``. ``None`` (default): the
  reward model's scalar head at the last real token (:func:`reward_model_score_fn`).
  :func:`host_scorer_score_fn` scores decoded text on the host instead (RLVR); then
  ``reward_model`` may be None and ``frozen.reward_params`` None, and a critic-free
  iteration holds no reward model at all.

  Metrics: every algorithm reports ``score``, ``score_raw``, ``kl``, ``kl_penalty``,
  ``non_score_reward`` (0 when the KL is a loss term), ``response_length``, ``stop_rate``,
  ``entropy_rollout``, ``advantage_mean``, ``loss``, ``policy_loss``, ``policy_clip_frac``,
  ``approx_kl``, ``ratio_mean``, ``entropy``, ``grad_norm``, ``beta``, ``skipped_updates``.
  Only with a critic: ``value_loss``, ``value_clip_frac``, ``value_mse``,
  ``value_explained_variance``; ``return_mean`` with a critic and for reinforce_pp (mean
  return-to-go); ``kl_loss`` (the reduced KL term, before β) when the KL is a loss term;
  ``group_score_std`` (mean within-group std of the total reward) for group methods.
  """
  if hp.algorithm in PREFERENCE_ALGORITHMS:
    raise ValueError(
      f"PPOHparams.algorithm={hp.algorithm!r} trains from preference pairs, not rollouts: "
      "use rlhf_jax.dpo.make_dpo_step (rlhf_jax.train.dpo.train_dpo)"
    )
  if hp.shared_trunk != (policy_model.cfg.head == "both"):
    raise ValueError(
      "shared_trunk=True needs a policy with head='both' (and False needs "
      f"head='lm'); got shared_trunk={hp.shared_trunk}, "
      f"head={policy_model.cfg.head!r}"
    )
  if hp.critic_free and value_model is not None:
    raise ValueError(
      f"value_model must be None for the critic-free algorithm="
      f"{hp.algorithm!r} (it has no value function)"
    )
  if not hp.critic_free and not hp.shared_trunk and value_model is None:
    raise ValueError("a separate value model is needed unless shared_trunk=True")
  score_sequences = _resolve_score_fn(reward_model, score_fn)
  ref_model = Transformer(policy_model.cfg.replace(head="lm"))
  temperature = hp.temperature
  n = hp.response_len
  recompute_old = hp.recomputes_old_logprobs(policy_model.cfg.lowest_dtype)
  kl_in_loss = hp.kl_in_loss_resolved
  reduction = hp.loss_reduction_resolved

  # --- choices, made once -------------------------------------------------------------------
  def heads(p):
    return (p - 1, p + n - 1)  # the positions whose outputs score response tokens

  if hp.group_size == 1:

    def repeat_prompts(x_BP):
      return x_BP
  else:

    def repeat_prompts(x_BP):
      """``[B, P] -> [B·G, P]``: rows ``g·G … g·G + G - 1`` are prompt ``g``."""
      return jnp.repeat(x_BP, hp.group_size, axis=0)

  if hp.shared_trunk:

    def policy_and_values(params, base, ids, mask, p):
      """Response-position logits ``[B,T,V]`` and values ``[B,T]`` from one trunk."""
      policy = factored_params(params["policy"], base)
      return policy_model.apply({"params": policy}, ids, mask, head_slice=heads(p))
  elif hp.critic_free:

    def policy_and_values(params, base, ids, mask, p):
      policy = factored_params(params["policy"], base)
      return policy_model.apply({"params": policy}, ids, mask, head_slice=heads(p)), None
  else:

    def policy_and_values(params, base, ids, mask, p):
      policy = factored_params(params["policy"], base)
      value = factored_params(params["value"], base)
      logits = policy_model.apply({"params": policy}, ids, mask, head_slice=heads(p))
      values = value_model.apply({"params": value}, ids, mask, head_slice=heads(p))
      return logits, values

  if recompute_old:

    def old_logprobs_and_values(params, base, ids, mask, p, sampler_logp):
      del sampler_logp
      logits, values = policy_and_values(params, base, ids, mask, p)
      return ops.token_logprobs(logits, ids[:, p:], temperature), values
  else:

    def old_logprobs_and_values(params, base, ids, mask, p, sampler_logp):
      # The sampler's log-probs are those of the rollout policy; XLA drops the unused
      # logits of this forward pass (and, without a critic, the whole pass).
      return sampler_logp, policy_and_values(params, base, ids, mask, p)[1]

  whiten_rewards = (
    functools.partial(ops.whiten, shift_mean=False, unbiased=hp.unbiased_whitening)
    if hp.whiten_rewards
    else _identity
  )
  whiten_advantages = (
    functools.partial(ops.whiten, shift_mean=True, unbiased=hp.unbiased_whitening)
    if hp.whiten_advantages
    else _identity
  )
  kl_update = kl_lib.adaptive_kl_update if hp.adaptive_kl else kl_lib.fixed_kl_update

  # Where the KL goes: the β of the per-token reward penalty (0 when the KL is a loss term)
  # and whether the rollout keeps log π_ref for the loss.
  if kl_in_loss:

    def reward_beta(kl_state):
      return jnp.zeros_like(kl_state.beta)

    def keep_ref(logp_ref):
      return logp_ref
  else:

    def reward_beta(kl_state):
      return kl_state.beta

    def keep_ref(logp_ref):
      del logp_ref

  # The advantage estimator: ``estimate(shaped, values_BT, mask_BT) -> (advantages_BT,
  # returns_BT or None, stats)``.
  if hp.algorithm == "ppo":

    def estimate(shaped, values, mask):
      advantages, returns = adv_lib.gae(
        whiten_rewards(shaped.rewards, mask), values, mask, hp.gamma, hp.lam
      )
      stats = {
        "value_explained_variance": ops.explained_variance(values, returns, mask),
        "return_mean": ops.masked_mean(returns, mask),
      }
      return whiten_advantages(advantages, mask), returns, stats
  elif hp.algorithm == "reinforce_pp":

    def estimate(shaped, values, mask):
      # REINFORCE++ (Hu 2025): the return-to-go of the KL-shaped rewards is GAE with V = 0
      # and λ = 1; whitened over the whole batch.
      del values
      to_go, _ = adv_lib.gae(shaped.rewards, jnp.zeros_like(shaped.rewards), mask, hp.gamma, 1.0)
      stats = {"return_mean": ops.masked_mean(to_go, mask)}
      return whiten_advantages(to_go, mask), None, stats
  else:
    group_advantages = {
      "grpo": functools.partial(adv_lib.grpo_advantages, scale_by_std=True),
      "dr_grpo": functools.partial(adv_lib.grpo_advantages, scale_by_std=False),
      "rloo": adv_lib.rloo_advantages,
    }[hp.algorithm]

    def estimate(shaped, values, mask):
      # One total reward per response: its score (after the missing-stop rule) minus the KL
      # penalty summed over its tokens when the KL is a reward penalty.
      del values
      total_B = ops.masked_sum(shaped.rewards, mask, axis=1)
      advantages_B = group_advantages(total_B, hp.group_size)
      advantages = jnp.where(mask != 0, advantages_B[:, None], 0)
      groups_NG = total_B.reshape(-1, hp.group_size)
      stats = {"group_score_std": jnp.mean(jnp.std(groups_NG, axis=1, ddof=1))}
      return advantages, None, stats

  # The loss terms: ``term(fwd: _Forward, mb: Rollout, beta) -> (loss, info)``, summed in order.
  policy_loss = functools.partial(
    losses.ppo_policy_loss,
    clip_eps=hp.clip_eps,
    clip_eps_high=hp.clip_eps_high,
    reduction=reduction,
  )

  def policy_term(fwd: _Forward, mb: Rollout, beta):
    del beta
    pg_loss, pg_info = policy_loss(fwd.logp, mb.logp_old_BT, mb.advantages_BT, mb.response_mask_BT)
    return pg_loss, {
      "policy_loss": pg_loss,
      "policy_clip_frac": pg_info.clip_frac,
      "approx_kl": pg_info.approx_kl,
      "ratio_mean": pg_info.ratio_mean,
    }

  def value_term(fwd: _Forward, mb: Rollout, beta):
    del beta
    vf_loss, vf_info = losses.ppo_value_loss(
      fwd.values, mb.values_old_BT, mb.returns_BT, mb.response_mask_BT, hp.value_clip_eps
    )
    return hp.vf_coef * vf_loss, {
      "value_loss": vf_loss,
      "value_clip_frac": vf_info.clip_frac,
      "value_mse": vf_info.mse,
    }

  reduce_kl = _token_reduction(reduction)

  def kl_term(fwd: _Forward, mb: Rollout, beta):
    # GRPO: β · k3(π_θ, π_ref) per token, reduced like the policy loss; the gradient flows
    # through log π_θ only (log π_ref is data).
    k_BT = kl_lib.kl_penalty(
      fwd.logp,
      jax.lax.stop_gradient(mb.logp_ref_BT),
      hp.kl_loss_estimator,
      mask=mb.response_mask_BT,
    )
    kl_loss = reduce_kl(k_BT, mb.response_mask_BT)
    return beta * kl_loss, {"kl_loss": kl_loss}

  loss_terms = (
    [policy_term] + ([] if hp.critic_free else [value_term]) + ([kl_term] if kl_in_loss else [])
  )

  # --- rollout → score → shaped rewards → advantages ------------------------------------------
  def rollout_and_score(state: PPOState, frozen: PPOFrozen, prompt_ids, prompt_mask, rng):
    p = prompt_ids.shape[1]
    prompt_ids, prompt_mask = repeat_prompts(prompt_ids), repeat_prompts(prompt_mask)
    # Under LoRA the policy is merged once here; the decode loop reads plain weights.
    base = frozen.ref_params
    policy = full_params(state.params["policy"], base)
    tokens, resp_mask, sampler_logp, has_stop = sample_responses(
      policy_model, hp, policy, prompt_ids, prompt_mask, rng
    )
    seq_ids = jnp.concatenate([prompt_ids, tokens], axis=1)
    seq_mask = jnp.concatenate([prompt_mask.astype(jnp.int32), resp_mask], axis=1)

    logp_old, values = old_logprobs_and_values(
      state.params, base, seq_ids, seq_mask, p, sampler_logp
    )
    logp_old = jax.lax.stop_gradient(logp_old)
    ref_logits = ref_model.apply(
      {"params": frozen.ref_params}, seq_ids, seq_mask, head_slice=heads(p)
    )
    logp_ref = ops.token_logprobs(ref_logits, tokens, temperature)
    raw_score = score_sequences(full_params(frozen.reward_params, base), seq_ids, seq_mask, p)
    score = adv_lib.apply_reward_normalization(raw_score, frozen.reward_gain, frozen.reward_bias)

    beta = reward_beta(state.kl)
    shaped = adv_lib.shape_rewards(
      score,
      logp_old,
      logp_ref,
      resp_mask,
      beta,
      hp.kl_estimator,
      has_stop_B=has_stop,
      missing_stop=hp.missing_stop,
      missing_stop_value=hp.missing_stop_value,
    )
    advantages, returns, estimator_stats = estimate(shaped, values, resp_mask)
    rollout = Rollout(
      seq_ids, seq_mask, resp_mask, logp_old, values, advantages, returns, keep_ref(logp_ref)
    )

    seq_kl_k1 = kl_lib.sequence_kl(logp_old, logp_ref, resp_mask, "k1")
    length = jnp.sum(resp_mask, axis=1).astype(jnp.float32)
    stats = {
      "score": jnp.mean(score),
      "score_raw": jnp.mean(raw_score),
      "kl": jnp.mean(seq_kl_k1),
      "kl_penalty": jnp.mean(jnp.sum(shaped.kl, axis=1)),
      "non_score_reward": -beta * jnp.mean(jnp.sum(shaped.kl, axis=1)),
      "response_length": jnp.mean(length),
      "stop_rate": jnp.mean(has_stop.astype(jnp.float32)),
      "entropy_rollout": -ops.masked_mean(logp_old, resp_mask),
      "advantage_mean": ops.masked_mean(advantages, resp_mask),
      **estimator_stats,
    }
    return rollout, stats, jnp.mean(seq_kl_k1)

  # --- the clipped update of one minibatch ------------------------------------------------------
  def loss_fn(params, base, mb: Rollout, p, beta):
    logits, values = policy_and_values(params, base, mb.seq_ids_BS, mb.seq_mask_BS, p)
    fwd = _Forward(ops.token_logprobs(logits, mb.seq_ids_BS[:, p:], temperature), values)
    loss, info = None, {}
    for term in loss_terms:
      term_loss, term_info = term(fwd, mb, beta)
      loss = term_loss if loss is None else loss + term_loss
      info.update(term_info)
    info["loss"] = loss
    info["entropy"] = losses.entropy_from_logits(
      jax.lax.stop_gradient(logits), mb.response_mask_BT, temperature
    )
    return loss, info

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def update_minibatch(carry: _UpdateCarry, base, mb: Rollout, p, beta):
    (loss, info), grads = grad_fn(carry.params, base, mb, p, beta)
    params, opt_state, finite, grad_norm = guarded_update(
      optimizer, carry.params, carry.opt_state, grads, loss
    )
    skipped = carry.skipped + (~finite).astype(jnp.int32)
    return _UpdateCarry(params, opt_state, skipped), dict(info, grad_norm=grad_norm)

  # --- the two phases of an iteration -----------------------------------------------------------
  def rollout_phase(state: PPOState, frozen: PPOFrozen, prompt_ids_BP, prompt_mask_BP):
    """Sample, score, shape rewards, advantages: ``(rollout, stats, observed_kl)``."""
    key = jax.random.fold_in(state.rng, state.step)
    sample_key, _ = jax.random.split(key)
    return rollout_and_score(state, frozen, prompt_ids_BP, prompt_mask_BP, sample_key)

  def update_phase(state: PPOState, rollout: Rollout, stats, observed_kl, base=None):
    """``epochs × num_minibatches`` clipped updates and the KL-controller step; ``base``: the
    frozen LoRA base (``frozen.ref_params``), None for dense params."""
    b = rollout.seq_ids_BS.shape[0]
    p = rollout.seq_ids_BS.shape[1] - n
    if b % hp.num_minibatches:
      raise ValueError(
        f"batch of {b} rollouts (prompts × group_size={hp.group_size}) is not "
        f"divisible by num_minibatches={hp.num_minibatches}"
      )
    mb_size = b // hp.num_minibatches
    _, shuffle_key = jax.random.split(jax.random.fold_in(state.rng, state.step))
    beta = state.kl.beta

    def epoch(carry, epoch_key):
      perm = jax.random.permutation(epoch_key, b).reshape(hp.num_minibatches, mb_size)
      batches = jax.tree.map(lambda x: x[perm], rollout)
      return jax.lax.scan(lambda c, mb: update_minibatch(c, base, mb, p, beta), carry, batches)

    carry = _UpdateCarry(state.params, state.opt_state, state.skipped_updates)
    carry, infos = jax.lax.scan(epoch, carry, jax.random.split(shuffle_key, hp.epochs))

    metrics = dict(stats)
    metrics.update({k: jnp.mean(v) for k, v in infos.items()})
    metrics["beta"] = state.kl.beta
    metrics["skipped_updates"] = carry.skipped
    new_state = state.replace(
      params=carry.params,
      opt_state=carry.opt_state,
      kl=kl_update(state.kl, observed_kl, b, hp.kl_target, hp.kl_horizon),
      step=state.step + 1,
      skipped_updates=carry.skipped,
    )
    return new_state, metrics

  def iteration(state: PPOState, frozen: PPOFrozen, prompt_ids_BP, prompt_mask_BP):
    rollout, stats, observed_kl = rollout_phase(state, frozen, prompt_ids_BP, prompt_mask_BP)
    return update_phase(state, rollout, stats, observed_kl, frozen.ref_params)

  if phases:
    return rollout_phase, update_phase
  return iteration
