"""Tests of the KV-cache sampler (`rlhf_jax.generation`): exactness against a full recompute,
padding, compile count, EOS handling, log-probs, top-k/top-p, early exit, min_new_tokens and
sampling frequencies."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import generation
from rlhf_jax.models import Transformer, TransformerConfig, init_params
from rlhf_jax.models.transformer import unstack_layers

V = 61  # not a multiple of the sampler's vocabulary block: exercises the padding path
PAD, EOS = 59, 60
P, N = 6, 10  # most tests share (batch 4, P, N) so that they share compiled programs
LENGTHS = [6, 3, 5, 1]

CONFIGS = {
  "gpt2": TransformerConfig(
    vocab_size=V, d_model=32, n_layers=2, n_heads=4, max_len=32, init_std=0.3
  ),
  "llama": TransformerConfig(
    vocab_size=V,
    d_model=32,
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,
    d_ff=64,
    norm="rmsnorm",
    mlp="swiglu",
    activation="silu",
    position="rope",
    rope_theta=100.0,
    qkv_bias=False,
    out_bias=False,
    mlp_bias=False,
    tie_embeddings=False,
    head="both",
    init_std=0.3,
  ),
}


@functools.lru_cache(maxsize=None)
def _model(name):
  cfg = CONFIGS[name]
  model = Transformer(cfg)
  return model, init_params(model, jax.random.PRNGKey(0))


@functools.partial(jax.jit, static_argnames=("model",))
def _logits(model, params, ids, mask):
  out = model.apply({"params": params}, ids, mask)
  return out[0] if isinstance(out, tuple) else out


def _prompts(lengths, p, seed=0):
  """Left-padded prompts: row b holds lengths[b] random real tokens at the right end."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, PAD, size=(len(lengths), p))
  mask = (np.arange(p)[None, :] >= p - np.asarray(lengths)[:, None]).astype(np.int32)
  return jnp.asarray(np.where(mask == 1, ids, PAD), jnp.int32), jnp.asarray(mask)


def _recompute(model, params, prompt, prompt_mask, out):
  """Logits of every response position from one full forward pass (no cache)."""
  ids = jnp.concatenate([prompt, out.tokens_BT], axis=1)
  mask = jnp.concatenate([prompt_mask, out.mask_BT], axis=1)
  p, n = prompt.shape[1], out.tokens_BT.shape[1]
  return np.asarray(_logits(model, params, ids, mask))[:, p - 1 : p - 1 + n]


def _log_softmax(x, axis=-1):
  x = x - x.max(axis, keepdims=True)
  return x - np.log(np.exp(x).sum(axis, keepdims=True))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_equals_full_recompute(name):
  model, params = _model(name)
  prompt, prompt_mask = _prompts(LENGTHS, P)
  out = generation.sample(
    model,
    params,
    prompt,
    prompt_mask,
    jax.random.PRNGKey(0),
    max_new_tokens=N,
    eos_id=-1,
    pad_id=PAD,
    temperature=0.0,
  )
  logits = _recompute(model, params, prompt, prompt_mask, out)
  np.testing.assert_array_equal(np.asarray(out.tokens_BT), logits.argmax(-1))
  np.testing.assert_array_equal(np.asarray(out.mask_BT), 1)
  assert int(out.steps) == N and not np.asarray(out.ended_B).any()
  # greedy log-probs are those of softmax(logits), T = 1
  want = np.take_along_axis(_log_softmax(logits), np.asarray(out.tokens_BT)[..., None], -1)
  np.testing.assert_allclose(np.asarray(out.logprobs_BT), want[..., 0], atol=2e-5)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_left_padding_gives_the_unpadded_continuation(name):
  model, params = _model(name)
  prompt, prompt_mask = _prompts(LENGTHS, P, seed=3)
  kw = dict(max_new_tokens=N, eos_id=-1, pad_id=PAD, temperature=0.0)
  padded = generation.sample(model, params, prompt, prompt_mask, jax.random.PRNGKey(0), **kw)
  alone = generation.sample(
    model, params, prompt[1:2, 3:], prompt_mask[1:2, 3:], jax.random.PRNGKey(0), **kw
  )
  assert prompt_mask[1, :3].sum() == 0 and prompt_mask[1, 3:].all()
  np.testing.assert_array_equal(padded.tokens_BT[1], alone.tokens_BT[0])
  np.testing.assert_allclose(padded.logprobs_BT[1], alone.logprobs_BT[0], atol=1e-5)


def test_compiles_once_for_seeds_prompts_temperatures_and_top_p():
  model, params = _model("gpt2")
  before = generation.compile_count()
  for i, (temperature, top_p, min_new) in enumerate(
    [(1.0, 1.0, 0), (0.0, 1.0, 0), (0.7, 0.9, 2), (1.3, 0.5, 5), (1, 1, 0)]
  ):
    # a (batch, prompt length) used by no other test, so its first call compiles here
    prompt, prompt_mask = _prompts([5, 7 - i], 7, seed=10 + i)
    out = generation.sample(
      model,
      params,
      prompt,
      prompt_mask,
      jax.random.PRNGKey(i),
      max_new_tokens=N,
      eos_id=EOS,
      pad_id=PAD,
      temperature=temperature,
      top_p=top_p,
      min_new_tokens=min_new,
    )
    jax.block_until_ready(out)
  assert generation.compile_count() - before == 1
  if hasattr(generation._sample_jit, "_cache_size"):
    sizes = generation._sample_jit._cache_size()
    out = generation.sample(
      model,
      params,
      prompt,
      prompt_mask,
      jax.random.PRNGKey(9),
      max_new_tokens=N,
      eos_id=EOS,
      pad_id=PAD,
      temperature=0.2,
    )
    assert generation._sample_jit._cache_size() == sizes
  # a new static value does compile again
  generation.sample(
    model,
    params,
    prompt,
    prompt_mask,
    jax.random.PRNGKey(0),
    max_new_tokens=N,
    eos_id=EOS,
    pad_id=PAD,
    top_k=3,
  )
  assert generation.compile_count() - before == 2


def test_tokens_after_eos_are_pad_and_masked():
  model, params = _model("gpt2")
  prompt, prompt_mask = _prompts(LENGTHS, P, seed=4)
  kw = dict(max_new_tokens=N, pad_id=PAD, temperature=0.0)
  free = np.asarray(
    generation.sample(
      model, params, prompt, prompt_mask, jax.random.PRNGKey(0), eos_id=-1, **kw
    ).tokens_BT
  )
  eos = int(free[0, 2])  # greedy is deterministic: row 0 now stops at its first `eos`
  out = generation.sample(
    model, params, prompt, prompt_mask, jax.random.PRNGKey(0), eos_id=eos, **kw
  )
  tokens, mask = np.asarray(out.tokens_BT), np.asarray(out.mask_BT)
  for b in range(4):
    hits = np.flatnonzero(free[b] == eos)
    n = hits[0] + 1 if hits.size else N
    np.testing.assert_array_equal(tokens[b, :n], free[b, :n])
    np.testing.assert_array_equal(tokens[b, n:], PAD)
    np.testing.assert_array_equal(mask[b], np.arange(N) < n)
    assert out.lengths_B[b] == n and bool(out.ended_B[b]) == bool(hits.size)
    np.testing.assert_array_equal(np.asarray(out.logprobs_BT)[b, n:], 0.0)
  assert out.lengths_B[0] <= 3


def test_sampled_invariants_and_logprobs_match_recompute():
  """Temperature sampling: log-probs = log_softmax(logits / T) of a full recompute."""
  for name in CONFIGS:
    model, params = _model(name)
    prompt, prompt_mask = _prompts(LENGTHS, P, seed=5)
    out = generation.sample(
      model,
      params,
      prompt,
      prompt_mask,
      jax.random.PRNGKey(7),
      max_new_tokens=N,
      eos_id=EOS,
      pad_id=PAD,
      temperature=0.7,
    )
    tokens, mask = np.asarray(out.tokens_BT), np.asarray(out.mask_BT)
    for b in range(4):
      hits = np.flatnonzero(tokens[b] == EOS)
      n = hits[0] + 1 if hits.size else N
      np.testing.assert_array_equal(mask[b], np.arange(N) < n)
      np.testing.assert_array_equal(tokens[b, n:], PAD)
      assert bool(out.ended_B[b]) == bool(hits.size) and out.lengths_B[b] == n
    logits = _recompute(model, params, prompt, prompt_mask, out)
    want = np.take_along_axis(_log_softmax(logits / 0.7), tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(out.logprobs_BT), np.where(mask > 0, want, 0), atol=5e-5)


def test_top_k_1_and_tiny_top_p_equal_greedy():
  model, params = _model("llama")
  prompt, prompt_mask = _prompts(LENGTHS, P, seed=6)
  kw = dict(max_new_tokens=N, eos_id=EOS, pad_id=PAD)
  greedy = generation.sample(
    model, params, prompt, prompt_mask, jax.random.PRNGKey(0), temperature=0.0, **kw
  )
  top1 = generation.sample(
    model, params, prompt, prompt_mask, jax.random.PRNGKey(1), temperature=1.0, top_k=1, **kw
  )
  nucleus = generation.sample(
    model, params, prompt, prompt_mask, jax.random.PRNGKey(2), temperature=1.3, top_p=1e-6, **kw
  )
  np.testing.assert_array_equal(top1.tokens_BT, greedy.tokens_BT)
  np.testing.assert_array_equal(nucleus.tokens_BT, greedy.tokens_BT)
  # T = 1: the full-vocabulary log-probs coincide with greedy's
  np.testing.assert_allclose(top1.logprobs_BT, greedy.logprobs_BT, atol=1e-5)


def _eos_first_params(name):
  """Params whose final norm emits a constant vector aligned with EOS's (tied) embedding:
  every position puts (almost) all mass on EOS."""
  model, params = _model(name)
  params = jax.tree_util.tree_map(jnp.asarray, params)
  d = model.cfg.d_model
  params["norm_final"] = dict(scale=jnp.zeros((d,)), bias=jnp.ones((d,)))
  params["embed"] = dict(embedding=params["embed"]["embedding"].at[EOS].set(2.0))
  return model, params


def test_early_exit_and_min_new_tokens():
  model, params = _eos_first_params("gpt2")
  prompt, prompt_mask = _prompts(LENGTHS, P, seed=8)
  kw = dict(max_new_tokens=N, eos_id=EOS, pad_id=PAD, temperature=1.0)
  out = generation.sample(model, params, prompt, prompt_mask, jax.random.PRNGKey(0), **kw)
  assert int(out.steps) == 1  # the while loop never ran a decode step
  np.testing.assert_array_equal(out.tokens_BT[:, 0], EOS)
  np.testing.assert_array_equal(out.tokens_BT[:, 1:], PAD)
  np.testing.assert_array_equal(out.lengths_B, 1)
  assert np.asarray(out.ended_B).all()

  out = generation.sample(
    model, params, prompt, prompt_mask, jax.random.PRNGKey(0), min_new_tokens=4, **kw
  )
  tokens = np.asarray(out.tokens_BT)
  assert int(out.steps) == 5
  assert (tokens[:, :4] != EOS).all()
  np.testing.assert_array_equal(tokens[:, 4], EOS)
  np.testing.assert_array_equal(tokens[:, 5:], PAD)
  np.testing.assert_array_equal(out.lengths_B, 5)
  # banned steps still report log softmax(logits / T) over the full vocabulary (EOS included)
  logits = _recompute(model, params, prompt, prompt_mask, out)
  want = np.take_along_axis(_log_softmax(logits), tokens[..., None], -1)[..., 0]
  np.testing.assert_allclose(np.asarray(out.logprobs_BT)[:, :5], want[:, :5], rtol=1e-5, atol=1e-3)
  assert (np.asarray(out.logprobs_BT)[:, :4] < -5).all()


def _assert_frequencies(tokens, probs):
  """Every empirical frequency within 5 binomial standard deviations (+ 1/n slack)."""
  n = tokens.size
  freq = np.bincount(tokens.ravel(), minlength=probs.size) / n
  tol = 5 * np.sqrt(probs * (1 - probs) / n) + 1.0 / n
  assert (np.abs(freq - probs) <= tol).all(), np.c_[freq, probs, tol]


def test_sample_token_frequencies_match_softmax():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(300,)).astype(np.float32) * 2.0
  n, temperature = 40000, 0.7
  draw = jax.jit(functools.partial(generation.sample_token, temperature=temperature))
  tok, lp = draw(jnp.broadcast_to(logits, (n, 300)), jax.random.PRNGKey(1))
  probs = np.exp(_log_softmax(logits / temperature))
  _assert_frequencies(np.asarray(tok), probs)
  np.testing.assert_allclose(np.asarray(lp), np.log(probs)[np.asarray(tok)], rtol=1e-5, atol=1e-5)

  # top-k then top-p: renormalised over the kept set; log-probs still over the full vocabulary
  small = np.array([2.0, 1.5, 1.0, 0.5, 0.0, -1.0, -3.0, 1.2], np.float32)
  tok, lp = jax.jit(
    functools.partial(generation.sample_token, temperature=1.0, top_k=5, top_p=0.75)
  )(jnp.broadcast_to(small, (n, 8)), jax.random.PRNGKey(2))
  p_top5 = np.exp(_log_softmax(np.where(np.argsort(-small).argsort() < 5, small, -np.inf)))
  order = np.argsort(-p_top5)
  before = np.cumsum(p_top5[order]) - p_top5[order]
  keep = np.zeros(8, bool)
  keep[order[before < 0.75]] = True
  want = np.where(keep, p_top5, 0) / np.where(keep, p_top5, 0).sum()
  _assert_frequencies(np.asarray(tok), want)
  np.testing.assert_allclose(np.asarray(lp), _log_softmax(small)[np.asarray(tok)], atol=1e-5)


def test_sample_frequencies_through_the_model():
  """First tokens of many rows with one prompt follow softmax(prefill logits / T)."""
  model, params = _model("gpt2")
  prompt, prompt_mask = _prompts([3], 3, seed=9)
  b = 4000
  out = generation.sample(
    model,
    params,
    jnp.tile(prompt, (b, 1)),
    jnp.tile(prompt_mask, (b, 1)),
    jax.random.PRNGKey(3),
    max_new_tokens=1,
    eos_id=EOS,
    pad_id=PAD,
    temperature=1.5,
  )
  logits = np.asarray(_logits(model, params, prompt, prompt_mask))[0, -1]
  _assert_frequencies(np.asarray(out.tokens_BT[:, 0]), np.exp(_log_softmax(logits / 1.5)))


def test_sample_fn_inside_a_jitted_program_matches_sample():
  """The pure entry point: a policy with a value head, unstacked params, a caller's jit,
  and a chunked prefill."""
  model, params = _model("llama")  # head="both"
  prompt, prompt_mask = _prompts(LENGTHS, P, seed=11)
  apply_fn = generation.make_apply_fn(model)

  @jax.jit
  def rollout(params, prompt, prompt_mask, rng):
    out = generation.sample_fn(
      apply_fn,
      unstack_layers(params),
      model.cfg,
      prompt,
      prompt_mask,
      rng,
      max_new_tokens=N,
      eos_id=EOS,
      pad_id=PAD,
      temperature=0.9,
    )
    return out, jnp.sum(out.logprobs_BT)

  out, total = rollout(params, prompt, prompt_mask, jax.random.PRNGKey(5))
  ref = generation.sample(
    model,
    params,
    prompt,
    prompt_mask,
    jax.random.PRNGKey(5),
    max_new_tokens=N,
    eos_id=EOS,
    pad_id=PAD,
    temperature=0.9,
  )
  np.testing.assert_array_equal(out.tokens_BT, ref.tokens_BT)
  np.testing.assert_allclose(out.logprobs_BT, ref.logprobs_BT, atol=1e-6)
  np.testing.assert_allclose(total, np.sum(ref.logprobs_BT), rtol=1e-5)

  # a prompt fed in chunks of 4 positions (some chunks are all padding for short rows)
  chunked = jax.jit(
    lambda p, i, m, r: generation.sample_fn(
      apply_fn,
      p,
      model.cfg,
      i,
      m,
      r,
      max_new_tokens=N,
      eos_id=-1,
      pad_id=PAD,
      temperature=0.0,
      prefill_chunk=4,
    )
  )(params, prompt, prompt_mask, jax.random.PRNGKey(0))
  whole = generation.sample(
    model,
    params,
    prompt,
    prompt_mask,
    jax.random.PRNGKey(0),
    max_new_tokens=N,
    eos_id=-1,
    pad_id=PAD,
    temperature=0.0,
  )
  np.testing.assert_array_equal(chunked.tokens_BT, whole.tokens_BT)
  np.testing.assert_allclose(chunked.logprobs_BT, whole.logprobs_BT, atol=1e-5)
