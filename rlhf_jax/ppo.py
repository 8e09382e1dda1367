"""PPO-RLHF as pure functions: one iteration = rollout, scoring, advantages, K×M updates.

``make_ppo_iteration(...)`` returns a function ``iteration(state, frozen, prompt_ids_BP,
prompt_mask_BP) -> (state, metrics)`` that is meant to be jitted whole (with the state
donated): sampling, the reference / value / reward forward passes, reward shaping with the
KL penalty, GAE, whitening and ``epochs × num_minibatches`` clipped policy + value updates
(nested ``lax.scan``) all run in one XLA program. Everything that changes between
iterations — KL coefficient, learning rate (an optax schedule on the step count), RNG — is
in the state as arrays, so nothing recompiles after the first iteration.

Shapes: B rollouts, P prompt length (left-padded), N response length, V vocabulary,
b = B // num_minibatches.

Roles (one module definition each, see ``rlhf_jax.models``):

* policy: ``Transformer`` with ``head="lm"`` (separate value model) or ``head="both"``
  (value head on the policy trunk, ``shared_trunk=True``);
* value: ``Transformer`` with ``head="scalar"`` (unused when the trunk is shared);
* reference: the policy's module definition with frozen params (LM head only);
* reward: ``Transformer`` with ``head="scalar"``, frozen, read at the last real token and
  normalised by a gain and bias fitted on reference samples.

The LM head runs only on the response positions (``head_slice``), log-probs come from a
fused log-softmax gather (:func:`rlhf_jax.ops.token_logprobs`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Optional

import flax.struct
import jax
import jax.numpy as jnp
import optax

from rlhf_jax import advantages as adv_lib
from rlhf_jax import generation
from rlhf_jax import kl as kl_lib
from rlhf_jax import losses, ops
from rlhf_jax import reward as reward_lib
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
    "sample_responses",
    "init_ppo_state",
    "init_value_from_reward",
    "truncate_at_stop",
    "make_ppo_iteration",
]


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
  # pass; None (default) recomputes when the policy computes in a dtype other than float32
  # (bfloat16 sampler log-probs differ from a full forward by up to ~0.025 nats per token).
  recompute_old_logprobs: Optional[bool] = None

  def __post_init__(self):
    if self.missing_stop not in ("none", "replace", "penalty"):
      raise ValueError(f"PPOHparams.missing_stop={self.missing_stop!r}; expected 'none', "
                       "'replace' or 'penalty'")
    if self.missing_stop_penalty < 0:
      raise ValueError(f"PPOHparams.missing_stop_penalty={self.missing_stop_penalty}: the "
                       "penalty is subtracted from the score of a response without a stop "
                       "token, so it must be >= 0")
    if self.kl_estimator not in kl_lib.ESTIMATORS:
      raise ValueError(f"PPOHparams.kl_estimator={self.kl_estimator!r}; expected one of "
                       f"{kl_lib.ESTIMATORS}")
    for name in ("response_len", "num_minibatches", "epochs"):
      if getattr(self, name) < 1:
        raise ValueError(f"PPOHparams.{name} must be >= 1, got {getattr(self, name)}")
    if self.temperature <= 0:
      raise ValueError(f"PPOHparams.temperature must be > 0 for RL sampling, got "
                       f"{self.temperature}")
    if self.top_k != 0 or self.top_p != 1.0:
      raise ValueError(
          f"PPOHparams.top_k={self.top_k}, top_p={self.top_p}: PPO samples from the full "
          "temperature-scaled distribution (top_k=0, top_p=1.0). The ratio π/π_old and the "
          "KL penalty use log-probs of that distribution; top-k/top-p sampling draws from a "
          "truncated one, which biases both (and can make the KL negative)")

  @property
  def missing_stop_value(self) -> Optional[float]:
    """The value :func:`rlhf_jax.advantages.shape_rewards` takes for ``missing_stop``."""
    return {"none": None, "replace": self.missing_stop_score,
            "penalty": self.missing_stop_penalty}[self.missing_stop]

  def recomputes_old_logprobs(self, compute_dtype: str) -> bool:
    """Whether ``log π_old`` comes from a full forward pass for a policy in ``compute_dtype``."""
    if self.recompute_old_logprobs is None:
      return jnp.dtype(compute_dtype) != jnp.float32
    return bool(self.recompute_old_logprobs)


class PPOState(flax.struct.PyTreeNode):
  """Everything that changes during PPO, as one pytree.

  params: ``{"policy": ..., "value": ...}`` (or only ``"policy"`` with a shared trunk).
  opt_state: optax state over ``params``.
  kl: ``KLControllerState`` (β).
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
  """Frozen inputs of an iteration: reference and reward params, reward normalisation."""

  ref_params: Any
  reward_params: Any
  reward_gain: jax.Array
  reward_bias: jax.Array


class Rollout(NamedTuple):
  """A scored batch of responses (all ``[B, ...]``), the data of the update epochs."""

  seq_ids: jax.Array  # [B, P+N] prompt (left-padded) + response (PAD after the end)
  seq_mask: jax.Array  # [B, P+N]
  response_mask: jax.Array  # [B, N]
  logp_old: jax.Array  # [B, N]
  values_old: jax.Array  # [B, N]
  advantages: jax.Array  # [B, N]
  returns: jax.Array  # [B, N]


def init_ppo_state(params, optimizer: optax.GradientTransformation, init_kl_coef: float,
                   rng: jax.Array) -> PPOState:
  """Initial PPO state; ``rng`` is a raw uint32 key (``jax.random.PRNGKey``)."""
  return PPOState(
      params=params,
      opt_state=optimizer.init(params),
      kl=kl_lib.adaptive_kl_init(jnp.asarray(init_kl_coef, jnp.float32)),
      rng=rng,
      step=jnp.zeros((), jnp.int32),
      skipped_updates=jnp.zeros((), jnp.int32),
  )


def init_value_from_reward(reward_model: Transformer, reward_params, reward_gain,
                           reward_bias, head: str = "reward"):
  """The value model and its params, started from the reward model.

  PPO's returns are in normalised reward units, ``gain · r + bias`` (mean 0, std 1 on
  reference samples, :func:`rlhf_jax.advantages.fit_reward_normalization`). The value model
  is the reward model's module with a bias on its scalar head (``scalar_bias=True``); with
  ``head="reward"`` the head is ``gain · w`` and its bias ``gain · b + bias`` (``b = 0`` for a
  head without one), so the value model's first predictions are exactly the normalised
  reward of each prefix — at the last response token, the score PPO is trained on.
  ``head="zero"`` keeps the reward trunk and zeroes the head (value 0 everywhere).

  Returns ``(value_model, value_params)``; the params are fresh arrays (the caller's
  ``reward_params`` may be donated or kept frozen independently).
  """
  if head not in ("reward", "zero"):
    raise ValueError(f"value init head={head!r}; expected 'reward' or 'zero'")
  if reward_model.cfg.head != "scalar":
    raise ValueError(f"the value model starts from a scalar-head model, got head="
                     f"{reward_model.cfg.head!r}")
  value_model = Transformer(reward_model.cfg.replace(scalar_bias=True))
  params = jax.tree.map(jnp.copy, dict(reward_params))
  kernel = params["score"]["kernel"]
  old_bias = params["score"].get("bias", jnp.zeros(kernel.shape[-1:], kernel.dtype))
  gain = jnp.asarray(reward_gain, kernel.dtype)
  if head == "zero":
    params["score"] = {"kernel": jnp.zeros_like(kernel), "bias": jnp.zeros_like(old_bias)}
  else:
    params["score"] = {"kernel": kernel * gain,
                       "bias": old_bias * gain + jnp.asarray(reward_bias, kernel.dtype)}
  return value_model, params


def truncate_at_stop(tokens_BN, mask_BN, stop_token_id, min_len, pad_id):
  """Cut each response after its first ``stop_token_id`` at index ``>= min_len - 1``.

  OAI truncates sentiment continuations at '.' once they are at least ``min_len`` tokens
  long; tokens after the cut become PAD and leave the mask. Returns ``(tokens, mask,
  has_stop_B)`` where ``has_stop_B`` says whether the row ended by the stop token.
  """
  n = tokens_BN.shape[1]
  idx_N = jnp.arange(n)
  is_stop_BN = (tokens_BN == stop_token_id) & (idx_N[None] >= min_len - 1) & (mask_BN > 0)
  has_stop_B = jnp.any(is_stop_BN, axis=1)
  first_B = jnp.where(has_stop_B, jnp.argmax(is_stop_BN, axis=1), n)
  keep_BN = idx_N[None] <= first_B[:, None]
  mask_BN = mask_BN * keep_BN.astype(mask_BN.dtype)
  tokens_BN = jnp.where(mask_BN > 0, tokens_BN, pad_id)
  return tokens_BN, mask_BN, has_stop_B


class Scored(NamedTuple):
  """Sampled responses with their reward-model scores (all ``[B, ...]``)."""

  tokens: jax.Array  # [B, N] response tokens, PAD after the end
  mask: jax.Array  # [B, N] 1 on real response tokens
  logprobs: jax.Array  # [B, N] sampler log-probs (temperature-scaled distribution)
  has_stop: jax.Array  # [B] ended with EOS or was truncated at the stop token
  seq_ids: jax.Array  # [B, P+N]
  seq_mask: jax.Array  # [B, P+N]
  raw_score: jax.Array  # [B] reward model at the last real token, before normalisation


def sample_responses(policy_model: Transformer, hp: PPOHparams, params, prompt_ids,
                      prompt_mask, rng, temperature=None):
  """Sample (and stop-token truncate) responses; ``temperature`` overrides ``hp.temperature``
  (it may be traced)."""
  sample = generation.sample_fn(
      generation.make_apply_fn(policy_model), unstack_layers(params), policy_model.cfg,
      prompt_ids, prompt_mask, rng, max_new_tokens=hp.response_len, eos_id=hp.eos_id,
      pad_id=hp.pad_id, top_k=hp.top_k,
      temperature=jnp.asarray(hp.temperature if temperature is None else temperature,
                              jnp.float32),
      top_p=jnp.asarray(hp.top_p, jnp.float32))
  tokens, mask = sample.tokens_BN, sample.mask_BN.astype(jnp.int32)
  has_stop = sample.ended_B
  if hp.stop_token_id is not None:
    tokens, mask, stopped = truncate_at_stop(tokens, mask, hp.stop_token_id,
                                             hp.min_response_len, hp.pad_id)
    has_stop = has_stop | stopped
  return tokens, mask, sample.logprobs_BN, has_stop


def make_sample_and_score(policy_model: Transformer, reward_model: Transformer,
                          hp: PPOHparams) -> Callable:
  """``fn(policy_params, reward_params, prompt_ids, prompt_mask, rng) -> Scored``.

  The rollout half of an iteration on its own: used to fit the reward normalisation on
  reference samples and to evaluate policies.
  """

  def fn(policy_params, reward_params, prompt_ids, prompt_mask, rng):
    p = prompt_ids.shape[1]
    tokens, mask, logprobs, has_stop = sample_responses(policy_model, hp, policy_params,
                                                         prompt_ids, prompt_mask, rng)
    seq_ids = jnp.concatenate([prompt_ids, tokens], axis=1)
    seq_mask = jnp.concatenate([prompt_mask.astype(jnp.int32), mask], axis=1)
    raw = reward_lib.score_sequences(reward_model, reward_params, seq_ids, seq_mask)
    return Scored(tokens, mask, logprobs, has_stop, seq_ids, seq_mask, raw)

  return fn


class _UpdateCarry(NamedTuple):
  """What the minibatch scan threads through the update epochs."""

  params: Any
  opt_state: Any
  skipped: jax.Array  # int32: minibatch updates skipped for a non-finite loss or gradient


def _identity(x, mask):
  del mask
  return x


def make_ppo_iteration(policy_model: Transformer, value_model: Optional[Transformer],
                       reward_model: Transformer, optimizer: optax.GradientTransformation,
                       hp: PPOHparams, phases: bool = False) -> Callable:
  """Build ``iteration(state, frozen, prompt_ids_BP, prompt_mask_BP) -> (state, metrics)``.

  The returned function is pure; jit it (``jax.jit(it, donate_argnums=0)``). ``metrics`` is
  a dict of scalar arrays (kept on device). With ``phases=True`` the two halves are returned
  instead, ``(rollout_phase, update_phase)`` — ``rollout_phase(state, frozen, ids, mask) ->
  (rollout, stats, observed_kl)`` and ``update_phase(state, rollout, stats, observed_kl) ->
  (state, metrics)`` — for profiling each separately.

  Every choice the hyper-parameters make (value head on the policy trunk or a separate
  value model, where ``log π_old`` comes from, reward and advantage whitening, the KL
  controller) is made here, once, as a choice of function; the iteration below reads
  rollout → score → shaped rewards → GAE → updates with no branches on ``hp``.
  """
  if hp.shared_trunk != (policy_model.cfg.head == "both"):
    raise ValueError("shared_trunk=True needs a policy with head='both' (and False needs "
                     f"head='lm'); got shared_trunk={hp.shared_trunk}, "
                     f"head={policy_model.cfg.head!r}")
  if not hp.shared_trunk and value_model is None:
    raise ValueError("a separate value model is needed unless shared_trunk=True")
  ref_model = Transformer(policy_model.cfg.replace(head="lm"))
  temperature = hp.temperature
  n = hp.response_len
  recompute_old = hp.recomputes_old_logprobs(policy_model.cfg.dtype)

  # --- choices, made once -------------------------------------------------------------------
  def heads(p):
    return (p - 1, p + n - 1)  # the positions whose outputs score response tokens

  if hp.shared_trunk:
    def policy_and_values(params, ids, mask, p):
      """Response-position logits ``[B,N,V]`` and values ``[B,N]`` from one trunk."""
      return policy_model.apply({"params": params["policy"]}, ids, mask, head_slice=heads(p))
  else:
    def policy_and_values(params, ids, mask, p):
      logits = policy_model.apply({"params": params["policy"]}, ids, mask, head_slice=heads(p))
      values = value_model.apply({"params": params["value"]}, ids, mask, head_slice=heads(p))
      return logits, values

  if recompute_old:
    def old_logprobs_and_values(params, ids, mask, p, sampler_logp):
      del sampler_logp
      logits, values = policy_and_values(params, ids, mask, p)
      return ops.token_logprobs(logits, ids[:, p:], temperature), values
  else:
    def old_logprobs_and_values(params, ids, mask, p, sampler_logp):
      # The sampler's log-probs are those of the rollout policy; XLA drops the unused
      # logits of this forward pass.
      return sampler_logp, policy_and_values(params, ids, mask, p)[1]

  whiten_rewards = (functools.partial(ops.whiten, shift_mean=False,
                                      unbiased=hp.unbiased_whitening)
                    if hp.whiten_rewards else _identity)
  whiten_advantages = (functools.partial(ops.whiten, shift_mean=True,
                                         unbiased=hp.unbiased_whitening)
                       if hp.whiten_advantages else _identity)
  kl_update = kl_lib.adaptive_kl_update if hp.adaptive_kl else kl_lib.fixed_kl_update

  # --- rollout → score → shaped rewards → GAE -------------------------------------------------
  def rollout_and_score(state: PPOState, frozen: PPOFrozen, prompt_ids, prompt_mask, rng):
    p = prompt_ids.shape[1]
    tokens, resp_mask, sampler_logp, has_stop = sample_responses(
        policy_model, hp, state.params["policy"], prompt_ids, prompt_mask, rng)
    seq_ids = jnp.concatenate([prompt_ids, tokens], axis=1)
    seq_mask = jnp.concatenate([prompt_mask.astype(jnp.int32), resp_mask], axis=1)

    logp_old, values = old_logprobs_and_values(state.params, seq_ids, seq_mask, p, sampler_logp)
    logp_old = jax.lax.stop_gradient(logp_old)
    ref_logits = ref_model.apply({"params": frozen.ref_params}, seq_ids, seq_mask,
                                 head_slice=heads(p))
    logp_ref = ops.token_logprobs(ref_logits, tokens, temperature)
    raw_score = reward_lib.score_sequences(reward_model, frozen.reward_params, seq_ids,
                                           seq_mask)
    score = adv_lib.apply_reward_normalization(raw_score, frozen.reward_gain, frozen.reward_bias)

    shaped = adv_lib.shape_rewards(
        score, logp_old, logp_ref, resp_mask, state.kl.beta, hp.kl_estimator,
        has_stop_B=has_stop, missing_stop=hp.missing_stop,
        missing_stop_value=hp.missing_stop_value)
    advantages, returns = adv_lib.gae(whiten_rewards(shaped.rewards, resp_mask), values,
                                      resp_mask, hp.gamma, hp.lam)
    advantages = whiten_advantages(advantages, resp_mask)
    rollout = Rollout(seq_ids, seq_mask, resp_mask, logp_old, values, advantages, returns)

    seq_kl_k1 = kl_lib.sequence_kl(logp_old, logp_ref, resp_mask, "k1")
    length = jnp.sum(resp_mask, axis=1).astype(jnp.float32)
    stats = {
        "score": jnp.mean(score),
        "score_raw": jnp.mean(raw_score),
        "kl": jnp.mean(seq_kl_k1),
        "kl_penalty": jnp.mean(jnp.sum(shaped.kl, axis=1)),
        "non_score_reward": -state.kl.beta * jnp.mean(jnp.sum(shaped.kl, axis=1)),
        "response_length": jnp.mean(length),
        "stop_rate": jnp.mean(has_stop.astype(jnp.float32)),
        "entropy_rollout": -ops.masked_mean(logp_old, resp_mask),
        "value_explained_variance": ops.explained_variance(values, returns, resp_mask),
        "advantage_mean": ops.masked_mean(advantages, resp_mask),
        "return_mean": ops.masked_mean(returns, resp_mask),
    }
    return rollout, stats, jnp.mean(seq_kl_k1)

  # --- the clipped update of one minibatch ------------------------------------------------------
  def loss_fn(params, mb: Rollout, p):
    logits, values = policy_and_values(params, mb.seq_ids, mb.seq_mask, p)
    logp = ops.token_logprobs(logits, mb.seq_ids[:, p:], temperature)
    pg_loss, pg_info = losses.ppo_policy_loss(logp, mb.logp_old, mb.advantages,
                                              mb.response_mask, hp.clip_eps)
    vf_loss, vf_info = losses.ppo_value_loss(values, mb.values_old, mb.returns, mb.response_mask,
                                             hp.value_clip_eps)
    loss = pg_loss + hp.vf_coef * vf_loss
    entropy = losses.entropy_from_logits(jax.lax.stop_gradient(logits), mb.response_mask,
                                         temperature)
    info = {
        "loss": loss, "policy_loss": pg_loss, "value_loss": vf_loss,
        "policy_clip_frac": pg_info.clip_frac, "approx_kl": pg_info.approx_kl,
        "ratio_mean": pg_info.ratio_mean, "value_clip_frac": vf_info.clip_frac,
        "value_mse": vf_info.mse, "entropy": entropy,
    }
    return loss, info

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def update_minibatch(carry: _UpdateCarry, mb: Rollout, p):
    (loss, info), grads = grad_fn(carry.params, mb, p)
    params, opt_state, finite, grad_norm = guarded_update(optimizer, carry.params,
                                                          carry.opt_state, grads, loss)
    skipped = carry.skipped + (~finite).astype(jnp.int32)
    return _UpdateCarry(params, opt_state, skipped), dict(info, grad_norm=grad_norm)

  # --- the two phases of an iteration -----------------------------------------------------------
  def rollout_phase(state: PPOState, frozen: PPOFrozen, prompt_ids_BP, prompt_mask_BP):
    """Sample, score, shape rewards, GAE: ``(rollout, stats, observed_kl)``."""
    key = jax.random.fold_in(state.rng, state.step)
    sample_key, _ = jax.random.split(key)
    return rollout_and_score(state, frozen, prompt_ids_BP, prompt_mask_BP, sample_key)

  def update_phase(state: PPOState, rollout: Rollout, stats, observed_kl):
    """``epochs × num_minibatches`` clipped updates and the KL-controller step."""
    b = rollout.seq_ids.shape[0]
    p = rollout.seq_ids.shape[1] - n
    if b % hp.num_minibatches:
      raise ValueError(f"batch of {b} rollouts is not divisible by num_minibatches="
                       f"{hp.num_minibatches}")
    mb_size = b // hp.num_minibatches
    _, shuffle_key = jax.random.split(jax.random.fold_in(state.rng, state.step))

    def epoch(carry, epoch_key):
      perm = jax.random.permutation(epoch_key, b).reshape(hp.num_minibatches, mb_size)
      batches = jax.tree.map(lambda x: x[perm], rollout)
      return jax.lax.scan(lambda c, mb: update_minibatch(c, mb, p), carry, batches)

    carry = _UpdateCarry(state.params, state.opt_state, state.skipped_updates)
    carry, infos = jax.lax.scan(epoch, carry, jax.random.split(shuffle_key, hp.epochs))

    metrics = dict(stats)
    metrics.update({k: jnp.mean(v) for k, v in infos.items()})
    metrics["beta"] = state.kl.beta
    metrics["skipped_updates"] = carry.skipped
    new_state = state.replace(
        params=carry.params, opt_state=carry.opt_state,
        kl=kl_update(state.kl, observed_kl, b, hp.kl_target, hp.kl_horizon),
        step=state.step + 1, skipped_updates=carry.skipped)
    return new_state, metrics

  def iteration(state: PPOState, frozen: PPOFrozen, prompt_ids_BP, prompt_mask_BP):
    rollout, stats, observed_kl = rollout_phase(state, frozen, prompt_ids_BP, prompt_mask_BP)
    return update_phase(state, rollout, stats, observed_kl)

  if phases:
    return rollout_phase, update_phase
  return iteration
