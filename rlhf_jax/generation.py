"""Sampling responses with a fixed-size KV cache: jitted prefill + ``lax.while_loop`` decode.

Two entry points:

* :func:`sample` — for a :class:`rlhf_jax.models.Transformer`. A module-level cached ``jax.jit``
  whose static arguments are the model (its config), ``max_new_tokens`` and ``top_k``; the
  batch size and prompt length come from the input shapes. Seeds, prompts, temperature,
  ``top_p``, ``min_new_tokens`` and the EOS/PAD ids are traced values, so changing them never
  recompiles (:func:`compile_count` tells how many programs were built).
* :func:`sample_fn` — the same algorithm as a pure function of an
  ``apply_fn(params, ids_BT, mask_BT, cache) -> (logits_BV, cache)``, to be called inside a
  larger jitted program (a PPO iteration, a sharded model, a policy with a value head).

Token conventions: prompts are left-padded with PAD, and PAD != EOS (a PAD equal to EOS
would make a padded row look finished, or a finished row look like padding). A response ends with the first EOS, which is part of the response (mask 1);
everything after it is PAD with mask 0 and log-prob 0. ``min_new_tokens`` bans EOS before
that many tokens. ``eos_id < 0`` disables stopping (every row runs ``max_new_tokens``).

Which distribution the log-probs refer to: ``logprobs_BT`` are
``log softmax(logits / τ)[token]`` over the *whole* vocabulary — the temperature-scaled
distribution that a PPO learner recomputes from the same logits (RL sampling is plain
temperature sampling, as in lm-human-preferences). They do
**not** include the sampling-time modifications: top-k / top-p truncation and the EOS ban of
``min_new_tokens`` change which tokens can be drawn (the behaviour policy) but not the
reported log-probs. With plain temperature sampling (``top_k=0, top_p=1``, after
``min_new_tokens``) the two coincide; otherwise the reported log-prob is lower than the
log-prob under the truncated distribution actually sampled from (the "negative KL from
top-k/top-p or a suppressed EOS" trap — use plain sampling for RL). With ``temperature=0``
(greedy) they are ``log softmax(logits)[token]`` (the temperature τ taken as 1).

Sampling draws one uniform number per row and step (all ``T x B`` of them before the loop)
and inverts the CDF of the (truncated) distribution block-wise: cheaper on CPU than
Gumbel-max, which needs a random number per vocabulary entry (the per-step threefry bits for
64 x 8192 logits cost more than the forward pass of a small model). Greedy decoding is the
same draw with u = 0 over the indicator of the maxima.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp

from rlhf_jax.models.transformer import Transformer, TransformerConfig, init_cache, unstack_layers

__all__ = [
  "SampleOutput",
  "ApplyFn",
  "make_apply_fn",
  "sample",
  "sample_fn",
  "sample_token",
  "compile_count",
]

ApplyFn = Callable[[Any, jax.Array, jax.Array, Any], Tuple[jax.Array, Any]]

_BLOCK = 128  # vocabulary block size of the two-level inverse-CDF draw
# Prefill chunk size target (batch x positions). Measured on the 2-core CPU box, batch 64 x 32
# prompt tokens: two chunks of 1024 tokens make the GPT-2 8x512 prefill alone ~12% faster than
# one of 2048, the whole sample() call 3-5% faster (4x256 and 8x512); 512 was no better.
_PREFILL_TOKENS = 1024


def _prefill_chunk(batch: int, prompt_len: int, chunk: Optional[int]) -> int:
  if chunk is None:
    chunk = max(1, _PREFILL_TOKENS // batch)
  return max(1, min(int(chunk), prompt_len))


class SampleOutput(NamedTuple):
  """Result of :func:`sample` / :func:`sample_fn` (T = ``max_new_tokens``).

  tokens_BT: int32 response tokens; PAD after the first EOS (and after an early stop).
  mask_BT: int32, 1 on real response tokens including the EOS itself, 0 after it.
  logprobs_BT: float32 ``log softmax(logits / τ)`` of each sampled token over the full
    vocabulary (see the module docstring for top-k/top-p/min_new_tokens); 0 where masked.
  lengths_B: int32 number of response tokens (EOS included) = ``mask_BT.sum(-1)``.
  ended_B: bool, the row emitted EOS.
  steps: int32 scalar, sampling steps run (tokens drawn per row); < T after an early stop.
  """

  tokens_BT: jax.Array
  mask_BT: jax.Array
  logprobs_BT: jax.Array
  lengths_B: jax.Array
  ended_B: jax.Array
  steps: jax.Array


def make_apply_fn(model: Transformer) -> ApplyFn:
  """``apply_fn(params, ids_BT, mask_BT, cache) -> (logits_BV, cache)`` for a Transformer.

  Returns float32 logits of the last input position only (the LM head runs on one position,
  also in the prefill); with ``head="both"`` the value output is dropped. ``params`` may be
  stacked or split by :func:`rlhf_jax.models.transformer.unstack_layers` (faster decoding).
  """
  if model.cfg.head not in ("lm", "both"):
    raise ValueError(f"sampling needs an LM head; TransformerConfig.head={model.cfg.head!r}")

  def apply_fn(params, ids_BT, mask_BT, cache):
    t = ids_BT.shape[1]
    out, cache = model.apply(
      {"params": params}, ids_BT, mask_BT, cache=cache, head_slice=(t - 1, t)
    )
    if isinstance(out, tuple):
      out = out[0]
    return out[:, 0].astype(jnp.float32), cache

  return apply_fn


def _inverse_cdf(w_BV: jax.Array, u_B: jax.Array) -> jax.Array:
  """Index i with probability ``w[i] / sum(w)`` given ``u ~ U[0, 1)``; ``w >= 0``, not all 0.

  Two levels: block sums and their cumulative sum pick a block of ``_BLOCK`` entries, a
  cumulative sum inside that block picks the entry. A zero-weight entry is never returned
  (indices are clamped to the last positive block / entry against rounding at the top end).
  """
  b, v = w_BV.shape
  n_blocks = -(-v // _BLOCK)
  if n_blocks * _BLOCK != v:
    w_BV = jnp.pad(w_BV, ((0, 0), (0, n_blocks * _BLOCK - v)))
  w_BJC = w_BV.reshape(b, n_blocks, _BLOCK)
  sum_BJ = jnp.sum(w_BJC, axis=-1)
  cum_BJ = jnp.cumsum(sum_BJ, axis=-1)
  target_B = u_B * cum_BJ[:, -1]
  blocks_J = jnp.arange(n_blocks, dtype=jnp.int32)
  j_B = jnp.sum((cum_BJ <= target_B[:, None]).astype(jnp.int32), axis=-1)
  j_B = jnp.minimum(j_B, jnp.max(jnp.where(sum_BJ > 0, blocks_J, 0), axis=-1))
  before_B = jnp.where(
    j_B > 0, jnp.take_along_axis(cum_BJ, jnp.maximum(j_B - 1, 0)[:, None], axis=-1)[:, 0], 0
  )
  w_BC = jnp.take_along_axis(w_BJC, j_B[:, None, None], axis=1)[:, 0]
  cum_BC = jnp.cumsum(w_BC, axis=-1)
  entries_C = jnp.arange(_BLOCK, dtype=jnp.int32)
  i_B = jnp.sum((cum_BC <= (target_B - before_B)[:, None]).astype(jnp.int32), axis=-1)
  i_B = jnp.minimum(i_B, jnp.max(jnp.where(w_BC > 0, entries_C, 0), axis=-1))
  return j_B * _BLOCK + i_B


def _top_p_threshold(sorted_desc_BK: jax.Array, top_p: jax.Array) -> jax.Array:
  """Smallest logit kept by nucleus filtering of logits sorted in descending order.

  Keeps the shortest prefix whose probability mass (renormalised over the given candidates)
  reaches ``top_p``; the most likely token is always kept.
  """
  probs_BK = jax.nn.softmax(sorted_desc_BK, axis=-1)
  mass_before_BK = jnp.cumsum(probs_BK, axis=-1) - probs_BK
  n_keep_B = jnp.maximum(jnp.sum((mass_before_BK < top_p).astype(jnp.int32), axis=-1), 1)
  return jnp.take_along_axis(sorted_desc_BK, (n_keep_B - 1)[:, None], axis=-1)


def sample_token(
  logits_BV: jax.Array,
  rng: jax.Array,
  *,
  temperature,
  top_k: int = 0,
  top_p=1.0,
  ban_id=-1,
  ban=False,
) -> Tuple[jax.Array, jax.Array]:
  """Draws one token per row; returns ``(token_B int32, logprob_B float32)``.

  ``z = logits / τ`` (τ the temperature). The draw is from ``softmax(z)`` restricted to the
  ``top_k`` largest entries (static int, 0 = all), then to the nucleus of mass ``top_p``
  (traced), with ``ban_id`` excluded when ``ban`` (traced bool); ``temperature <= 0`` takes
  the argmax of the same restricted logits (the lowest index among ties). The log-prob is
  ``z[token] - logsumexp(z)`` over the full, unrestricted vocabulary (τ = 1 when greedy).
  One uniform number per row is drawn from ``rng``.
  """
  u_B = jax.random.uniform(rng, (logits_BV.shape[0],), jnp.float32)
  return _draw(
    logits_BV, u_B, temperature=temperature, top_k=top_k, top_p=top_p, ban_id=ban_id, ban=ban
  )


def _draw(logits_BV, u_B, *, temperature, top_k, top_p, ban_id, ban):
  """:func:`sample_token` given the row uniforms ``u_B`` in ``[0, 1)``."""
  logits_BV = logits_BV.astype(jnp.float32)
  b, v = logits_BV.shape
  temperature = jnp.asarray(temperature, jnp.float32)
  top_p = jnp.asarray(top_p, jnp.float32)
  greedy = temperature <= 0
  z_BV = logits_BV * jnp.where(greedy, 1.0, 1.0 / jnp.where(greedy, 1.0, temperature))
  vocab_V = jnp.arange(v, dtype=jnp.int32)
  banned_V = (vocab_V == ban_id) & ban
  allowed_BV = jnp.where(banned_V, -jnp.inf, z_BV)

  floor_B1 = jnp.full((b, 1), -jnp.inf, jnp.float32)
  if top_k > 0:
    candidates_BK = jax.lax.top_k(allowed_BV, min(top_k, v))[0]
    floor_B1 = candidates_BK[:, -1:]
  else:
    candidates_BK = None

  def nucleus(allowed_BV):
    if candidates_BK is not None:
      return _top_p_threshold(candidates_BK, top_p)
    return _top_p_threshold(-jnp.sort(-allowed_BV, axis=-1), top_p)

  floor_B1 = jax.lax.cond(
    top_p < 1.0, lambda a: jnp.maximum(floor_B1, nucleus(a)), lambda a: floor_B1, allowed_BV
  )

  max_B1 = jnp.max(allowed_BV, axis=-1, keepdims=True)
  exp_BV = jnp.exp(allowed_BV - max_B1)  # 0 on the banned id
  # Greedy is the same draw with u = 0 over the indicator of the maxima (-> lowest argmax).
  weights_BV = jnp.where(
    greedy,
    (allowed_BV == max_B1).astype(jnp.float32),
    jnp.where(allowed_BV >= floor_B1, exp_BV, 0.0),
  )
  token_B = _inverse_cdf(weights_BV, jnp.where(greedy, 0.0, u_B)).astype(jnp.int32)

  # log-sum-exp of the full z: the allowed part plus, if banned, the banned entry.
  lse_B = max_B1[:, 0] + jnp.log(jnp.sum(exp_BV, axis=-1))
  banned_z_B = jnp.take(z_BV, jnp.clip(jnp.asarray(ban_id, jnp.int32), 0, v - 1), axis=-1)
  lse_B = jnp.where(jnp.any(banned_V), jnp.logaddexp(lse_B, banned_z_B), lse_B)
  chosen_B = jnp.take_along_axis(z_BV, token_B[:, None], axis=-1)[:, 0]
  return token_B, chosen_B - lse_B


class _Carry(NamedTuple):
  step: jax.Array
  token_B: jax.Array
  cache: Any
  tokens_BT: jax.Array
  logprobs_BT: jax.Array
  lengths_B: jax.Array
  ended_B: jax.Array


def sample_fn(
  apply_fn: ApplyFn,
  params: Any,
  cache: Any,
  prompt_ids_BP: jax.Array,
  prompt_mask_BP: jax.Array,
  rng: jax.Array,
  *,
  max_new_tokens: int,
  eos_id,
  pad_id,
  temperature=1.0,
  top_k: int = 0,
  top_p=1.0,
  min_new_tokens=0,
  prefill_chunk: Optional[int] = None,
) -> SampleOutput:
  """Samples up to ``max_new_tokens`` per row; pure and jittable (no jit of its own).

  Args:
    apply_fn: ``(params, ids_BT, mask_BT, cache) -> (logits, cache)``: writes the T tokens
      into the cache at its index and returns float logits of the last position ``[B, V]``
      (or of all positions ``[B, T, V]``, of which the last is used — slower in the prefill).
      :func:`make_apply_fn` builds it for a Transformer.
    params: whatever ``apply_fn`` takes (for a Transformer, ``unstack_layers(params)``
      decodes faster than stacked params; outputs are the same).
    cache: an empty cache with at least ``P + max_new_tokens`` slots, or a
      ``TransformerConfig`` to allocate ``init_cache(cfg, B, P + max_new_tokens)`` here.
    prompt_ids_BP, prompt_mask_BP: left-padded prompts (the last position must be real).
    rng: a PRNG key (raw uint32 or typed), used once to draw the ``[T, B]`` uniforms of
      the inverse-CDF draws (step ``i`` uses row ``i``).
    max_new_tokens, top_k: static ints.
    eos_id, pad_id, temperature, top_p, min_new_tokens: scalars, may be traced. ``eos_id < 0``
      disables stopping; ``temperature <= 0`` is greedy.
    prefill_chunk: static; the prompt is run through the model in chunks of this many
      positions (None: about ``_PREFILL_TOKENS`` tokens per chunk, see there).

  Returns:
    :class:`SampleOutput`. The decode loop stops as soon as every row has emitted EOS.
  """
  n = int(max_new_tokens)
  if n < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  b = prompt_ids_BP.shape[0]
  eos_id = jnp.asarray(eos_id, jnp.int32)
  pad_id = jnp.asarray(pad_id, jnp.int32)
  min_new_tokens = jnp.asarray(min_new_tokens, jnp.int32)

  # All uniforms at once: one RNG call instead of a small one per step (each costs as much
  # as a layer's matmul on CPU). Step i uses row uniforms u_NB[i].
  u_NB = jax.random.uniform(rng, (n, b), jnp.float32)

  def draw(logits_BV, step):
    return _draw(
      logits_BV,
      u_NB[step],
      temperature=temperature,
      top_k=top_k,
      top_p=top_p,
      ban_id=eos_id,
      ban=step < min_new_tokens,
    )

  def record(carry, token_B, logprob_B):
    live_B = ~carry.ended_B
    token_B = jnp.where(live_B, token_B, pad_id)
    logprob_B = jnp.where(live_B, logprob_B, 0.0)
    return carry._replace(
      step=carry.step + 1,
      token_B=token_B,
      tokens_BT=jax.lax.dynamic_update_slice(carry.tokens_BT, token_B[:, None], (0, carry.step)),
      logprobs_BT=jax.lax.dynamic_update_slice(
        carry.logprobs_BT, logprob_B[:, None], (0, carry.step)
      ),
      lengths_B=carry.lengths_B + live_B.astype(jnp.int32),
      ended_B=carry.ended_B | (live_B & (token_B == eos_id)),
    )

  if isinstance(cache, TransformerConfig):
    cache = init_cache(cache, b, prompt_ids_BP.shape[1] + n)

  def forward(ids_BT, mask_BT, cache):
    logits, cache = apply_fn(params, ids_BT, mask_BT, cache)
    return (logits[:, -1] if logits.ndim == 3 else logits), cache

  prompt_mask_BP = prompt_mask_BP.astype(jnp.int32)
  chunk = _prefill_chunk(b, prompt_ids_BP.shape[1], prefill_chunk)
  for start in range(0, prompt_ids_BP.shape[1], chunk):
    logits_BV, cache = forward(
      prompt_ids_BP[:, start : start + chunk], prompt_mask_BP[:, start : start + chunk], cache
    )
  zero_B = jnp.zeros((b,), jnp.int32)
  carry = _Carry(
    step=jnp.zeros((), jnp.int32),
    token_B=zero_B,
    cache=cache,
    tokens_BT=jnp.full((b, n), pad_id, jnp.int32),
    logprobs_BT=jnp.zeros((b, n), jnp.float32),
    lengths_B=zero_B,
    ended_B=jnp.zeros((b,), bool),
  )
  carry = record(carry, *draw(logits_BV, carry.step))

  def cond(carry):
    return (carry.step < n) & ~jnp.all(carry.ended_B)

  def body(carry):
    # The token fed now was drawn last step; it is real if its row was live then.
    fed_live_B = carry.lengths_B == carry.step
    logits_BV, cache = forward(
      carry.token_B[:, None], fed_live_B[:, None].astype(jnp.int32), carry.cache
    )
    return record(carry._replace(cache=cache), *draw(logits_BV, carry.step))

  carry = jax.lax.while_loop(cond, body, carry)
  mask_BT = (jnp.arange(n, dtype=jnp.int32)[None, :] < carry.lengths_B[:, None]).astype(jnp.int32)
  return SampleOutput(
    tokens_BT=carry.tokens_BT,
    mask_BT=mask_BT,
    logprobs_BT=carry.logprobs_BT,
    lengths_B=carry.lengths_B,
    ended_B=carry.ended_B,
    steps=carry.step,
  )


_TRACES = [0]


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "top_k"))
def _sample_jit(
  model,
  params,
  prompt_ids_BP,
  prompt_mask_BP,
  rng,
  eos_id,
  pad_id,
  temperature,
  top_p,
  min_new_tokens,
  *,
  max_new_tokens,
  top_k,
):
  _TRACES[0] += 1
  return sample_fn(
    make_apply_fn(model),
    unstack_layers(params),
    model.cfg,
    prompt_ids_BP,
    prompt_mask_BP,
    rng,
    max_new_tokens=max_new_tokens,
    eos_id=eos_id,
    pad_id=pad_id,
    temperature=temperature,
    top_k=top_k,
    top_p=top_p,
    min_new_tokens=min_new_tokens,
  )


def sample(
  model: Transformer,
  params: Any,
  prompt_ids_BP: jax.Array,
  prompt_mask_BP: jax.Array,
  rng: jax.Array,
  *,
  max_new_tokens: int,
  eos_id: int,
  pad_id: int,
  temperature=1.0,
  top_k: int = 0,
  top_p=1.0,
  min_new_tokens=0,
) -> SampleOutput:
  """Samples responses to left-padded prompts with a :class:`Transformer`.

  Compiles once per (batch, prompt length, ``max_new_tokens``, ``top_k``, model config);
  the other arguments are traced. See :func:`sample_fn` for the arguments and the module
  docstring for what ``logprobs_BT`` means under top-k/top-p/min_new_tokens.

  Args:
    model: a Transformer with ``head="lm"`` or ``"both"``.
    params: its params (stacked, as created by ``init_params``).
    prompt_ids_BP, prompt_mask_BP: ``[B, P]`` ints, left-padded (mask 0 on PAD).
    rng: PRNG key.
    max_new_tokens: T, the response length bound (static).
    eos_id, pad_id: distinct token ids; ``eos_id < 0`` disables stopping.
    temperature: ``> 0`` samples ``softmax(logits / τ)``; ``<= 0`` is greedy.
    top_k: static int, 0 = no top-k truncation.
    top_p: nucleus mass in ``(0, 1]``; 1 = no truncation.
    min_new_tokens: EOS is banned while fewer tokens than this have been generated.

  Returns:
    :class:`SampleOutput` with ``[B, T]`` arrays.
  """
  if int(pad_id) == int(eos_id):
    raise ValueError(
      f"pad_id and eos_id must differ (both {pad_id}): with PAD = EOS a "
      "padded prompt row looks finished"
    )
  if prompt_ids_BP.shape != prompt_mask_BP.shape:
    raise ValueError(
      f"prompt_ids_BP {prompt_ids_BP.shape} and prompt_mask_BP "
      f"{prompt_mask_BP.shape} must have the same shape"
    )
  return _sample_jit(
    model,
    params,
    jnp.asarray(prompt_ids_BP, jnp.int32),
    jnp.asarray(prompt_mask_BP, jnp.int32),
    rng,
    jnp.asarray(eos_id, jnp.int32),
    jnp.asarray(pad_id, jnp.int32),
    jnp.asarray(temperature, jnp.float32),
    jnp.asarray(top_p, jnp.float32),
    jnp.asarray(min_new_tokens, jnp.int32),
    max_new_tokens=int(max_new_tokens),
    top_k=int(top_k),
  )


def compile_count() -> int:
  """How many programs :func:`sample` has traced and compiled in this process."""
  return _TRACES[0]
