"""LoRA: merge against a float64 oracle, the base untouched and never a gradient, optimizer
state for adapters and heads only, every trainer's step with LoRA (SFT, reward model, DPO,
PPO, GRPO), the reference as the base with adapters off, the sharding of adapters, and the
merged export read by transformers."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlhf_jax import dpo as dpo_lib
from rlhf_jax import lora, losses, ppo, sft, sharding
from rlhf_jax import reward as reward_lib
from rlhf_jax.models import Transformer, TransformerConfig, init_params

VOCAB = 24
GPT = TransformerConfig(vocab_size=VOCAB, d_model=16, n_layers=2, n_heads=2, max_len=32)
LLAMA = TransformerConfig(
  vocab_size=VOCAB,
  d_model=16,
  n_layers=2,
  n_heads=4,
  n_kv_heads=2,
  d_ff=24,
  max_len=32,
  norm="rmsnorm",
  mlp="swiglu",
  activation="silu",
  position="rope",
  qkv_bias=False,
  out_bias=False,
  mlp_bias=False,
  tie_embeddings=False,
)
SPEC = lora.LoraSpec(rank=4, alpha=8.0, targets=("q", "v"))
ALL = lora.LoraSpec(rank=3, alpha=5.0, targets=("q", "k", "v", "o", "gate", "up", "down"))


@functools.lru_cache(maxsize=None)
def _base(cfg, seed=0):
  model = Transformer(cfg)
  return model, jax.jit(lambda k: init_params(model, k))(jax.random.PRNGKey(seed))


@functools.lru_cache(maxsize=None)
def _forward(cfg):
  """``fn(params, ids, mask) -> outputs``, jitted once per config."""
  model = Transformer(cfg)
  return jax.jit(lambda p, ids, mask: model.apply({"params": p}, ids, mask))


def _random_b(adapters, seed=1, std=0.3):
  """Adapters with a non-zero B (a trained state), so the merge is not the identity."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map_with_path(
    lambda path, x: (
      jnp.asarray(std * rng.standard_normal(x.shape), x.dtype) if path[-1].key == "b" else x
    ),
    adapters,
  )


def _host(tree):
  return jax.tree.map(lambda x: np.array(x, copy=True), tree)


def _assert_same(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def _ids(b=4, t=8, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(2, VOCAB, (b, t)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[0, :2] = 0
  return ids, mask


# ----------------------------------------------------------------------------- the transform


def test_merge_equals_a_float64_oracle_and_b_zero_is_the_base_exactly():
  model, base = _base(LLAMA)
  adapters = lora.init_adapters(ALL, base, jax.random.PRNGKey(3))
  # B = 0 at the start: the merged params are the base, bit for bit, and so is the forward.
  merged0 = lora.merge(base, adapters, ALL)
  _assert_same(merged0, base)
  ids, mask = _ids()
  fwd = _forward(LLAMA)
  np.testing.assert_array_equal(fwd(merged0, ids, mask), fwd(base, ids, mask))
  # A trained B: W + (alpha / r) A @ B per layer, in float64 numpy.
  adapters = _random_b(adapters)
  merged = jax.jit(functools.partial(lora.merge, spec=ALL))(base, adapters)
  oracle = _host(base)
  n_adapted = 0
  for name, group in (("attn", "qkvo"), ("mlp", ("gate", "up", "down"))):
    for m in group:
      a = np.asarray(adapters["layers"][name][m]["a"], np.float64)
      b = np.asarray(adapters["layers"][name][m]["b"], np.float64)
      w = np.asarray(base["layers"][name][m]["kernel"], np.float64)
      assert a.shape == (LLAMA.n_layers, w.shape[1], ALL.rank)
      want = w + (ALL.alpha / ALL.rank) * np.einsum("lir,lro->lio", a, b)
      oracle["layers"][name][m]["kernel"] = want.astype(np.float32)
      np.testing.assert_allclose(merged["layers"][name][m]["kernel"], want, rtol=1e-6, atol=1e-6)
      n_adapted += 1
  assert n_adapted == 7
  # Every other leaf is the base's, and the caller's base is not written to.
  _assert_same(merged["lm_head"], base["lm_head"])
  _assert_same(merged["layers"]["norm_attn"], base["layers"]["norm_attn"])
  got = fwd(merged, ids, mask)
  want = fwd(jax.tree.map(jnp.asarray, oracle), ids, mask)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert float(jnp.max(jnp.abs(got - fwd(base, ids, mask)))) > 1e-2


@pytest.mark.parametrize("cfg", [LLAMA, GPT], ids=["llama", "gpt2"])
def test_factored_adapters_give_the_merged_forward_and_its_gradient(cfg):
  """``factored_params`` (x W + s (x A) B in the layer) is the same function of the adapters
  as the merge: equal outputs and equal gradients with respect to A, B and a dense head,
  checked against a float64 oracle of the merged model; and its gradient program forms no
  dense [in, out] weight gradient (the fewer-FLOPs claim, read from the compiled cost)."""
  spec = ALL if cfg is LLAMA else lora.LoraSpec(rank=3, alpha=5.0, targets=("q", "v", "up"))
  scalar = cfg.replace(head="both")
  model, base = _base(scalar)
  trainable = lora.init_lora_params(
    spec, base, jax.random.PRNGKey(4), dense={"score": base["score"]}
  )
  trainable = trainable.replace(adapters=_random_b(trainable.adapters))
  ids, mask = _ids()

  def loss(t, frozen, params_fn):
    logits, scores = model.apply({"params": params_fn(t, frozen)}, ids, mask)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 3] * mask) + jnp.mean(scores**2)

  fac = jax.jit(jax.value_and_grad(functools.partial(loss, params_fn=lora.factored_params)))
  mer = jax.jit(jax.value_and_grad(functools.partial(loss, params_fn=lora.full_params)))
  (lf, gf), (lm, gm) = fac(trainable, base), mer(trainable, base)
  with jax.enable_x64():
    t64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), trainable)
    b64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), base)
    model64 = Transformer(scalar.replace(dtype="float64", param_dtype="float64"))

    def loss64(t, frozen):
      logits, scores = model64.apply({"params": lora.full_params(t, frozen)}, ids, mask)
      return jnp.mean(jax.nn.log_softmax(logits)[..., 3] * mask) + jnp.mean(scores**2)

    l64, g64 = jax.value_and_grad(loss64)(t64, b64)
    np.testing.assert_allclose(float(lf), float(l64), rtol=1e-5)
    np.testing.assert_allclose(float(lm), float(l64), rtol=1e-5)
    scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(g64))
    for got in (gf, gm):
      jax.tree.map(
        lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * scale), got, g64
      )
  # Fewer FLOPs: the factored gradient skips x^T dy for every adapted kernel (XLA counts
  # the scanned layer body once, so these are per-layer totals, still comparable).
  flops_f = fac.lower(trainable, base).compile().cost_analysis()["flops"]
  flops_m = mer.lower(trainable, base).compile().cost_analysis()["flops"]
  assert flops_f < flops_m


def test_targets_aliases_and_errors_name_the_field():
  gpt = jax.eval_shape(lambda: init_params(Transformer(GPT), jax.random.PRNGKey(0)))
  _, llama = _base(LLAMA)
  aliased = lora.LoraSpec(targets=("q_proj", "attn/v"))
  assert lora.target_paths(aliased, llama) == lora.target_paths(SPEC, llama)
  assert lora.target_paths(SPEC, llama) == [
    ("layers", "attn", "q", "kernel"),
    ("layers", "attn", "v", "kernel"),
  ]
  with pytest.raises(ValueError, match=r"LoraSpec.targets: 'gate' matches no kernel"):
    lora.init_adapters(lora.LoraSpec(targets=("gate",)), gpt, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match=r"'embed' matches no kernel"):
    lora.target_paths(lora.LoraSpec(targets=("embed",)), gpt)
  for kwargs, field in (
    ({"rank": 0}, "LoraSpec.rank"),
    ({"rank": 2.5}, "LoraSpec.rank"),
    ({"alpha": 0.0}, "LoraSpec.alpha"),
    ({"targets": ()}, "LoraSpec.targets"),
    ({"targets": "q"}, "LoraSpec.targets"),
  ):
    with pytest.raises(ValueError, match=field):
      lora.LoraSpec(**kwargs)
  with pytest.raises(ValueError, match="base=None"):
    lora.full_params(lora.init_lora_params(SPEC, gpt, jax.random.PRNGKey(0)), None)


def test_adapters_shard_like_their_kernels_input_and_output_axes():
  model, base = _base(LLAMA)
  mesh = sharding.make_mesh(2, 2, 2)
  trainable = lora.init_lora_params(ALL, base, jax.random.PRNGKey(0))
  placed = lora.shard_trainable(trainable, model, mesh)
  q = placed.adapters["layers"]["attn"]["q"]
  down = placed.adapters["layers"]["mlp"]["down"]
  # q: kernel [layers, embed, heads] -> A [layers, embed(fsdp), r], B [layers, r, heads(tensor)]
  assert q["a"].sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", None)
  assert q["b"].sharding.spec == jax.sharding.PartitionSpec(None, None, "tensor")
  # down: kernel [layers, mlp, embed] -> A on 'tensor', B on 'fsdp'.
  assert down["a"].sharding.spec == jax.sharding.PartitionSpec(None, "tensor", None)
  assert down["b"].sharding.spec == jax.sharding.PartitionSpec(None, None, "fsdp")


# ----------------------------------------------------------------------------- SFT


def _lm_batch(b=8, t=10):
  """A learnable toy: each row counts up from a random start (token t+1 follows t)."""
  start = np.random.default_rng(0).integers(2, 8, (b, 1))
  ids = (start + np.arange(t)[None]).astype(np.int32) % VOCAB
  mask = np.ones_like(ids)
  return {"ids": ids, "mask": mask, "loss_mask": mask}


def test_sft_step_trains_only_adapters_and_the_optimizer_state_is_theirs():
  model, base = _base(LLAMA)
  spec = lora.LoraSpec(rank=4, alpha=8.0, targets=("q", "v", "up", "down"))
  trainable = lora.init_lora_params(spec, base, jax.random.PRNGKey(1))
  # The trainable pytree holds adapters only: no leaf of the base. Hand count: per layer,
  # q is 16 x 16 (A 16 x 4, B 4 x 16), v 16 x 8 (2 KV heads of 4), up 16 x 24, down 24 x 16.
  per_layer = (16 * 4 + 4 * 16) + (16 * 4 + 4 * 8) + (16 * 4 + 4 * 24) + (24 * 4 + 4 * 16)
  assert lora.trainable_count(trainable) == LLAMA.n_layers * per_layer == 1088
  opt = optax.adam(3e-2)
  state = sft.init_lm_state(trainable, opt)
  # Hand count of Adam's state: mu and nu per trainable scalar, plus one int32 step counter.
  size = lora.optimizer_state_size(state.opt_state)
  n = lora.trainable_count(trainable)
  assert size == {"count": 2 * n + 1, "bytes": 4 * (2 * n + 1)}
  dense = lora.optimizer_state_size(jax.eval_shape(opt.init, base))
  assert dense["count"] == 2 * lora.trainable_count(base) + 1
  assert size["bytes"] * 3 < dense["bytes"], (size, dense)
  # On a SmolLM2-135M shape (30 layers x 576, 9 heads of 64, 3 KV heads; shapes only), rank 8
  # on q and v: 30 x 8 x ((576 + 576) + (576 + 192)) adapter scalars, ~300x fewer than the base.
  smol = TransformerConfig(
    **{
      **dataclasses.asdict(LLAMA),
      "vocab_size": 49152,
      "d_model": 576,
      "n_layers": 30,
      "n_heads": 9,
      "n_kv_heads": 3,
      "d_ff": 1536,
      "tie_embeddings": True,
    }
  )
  smol_base = jax.eval_shape(lambda: init_params(Transformer(smol), jax.random.PRNGKey(0)))
  smol_lora = jax.eval_shape(
    lambda: lora.init_adapters(lora.LoraSpec(rank=8), smol_base, jax.random.PRNGKey(0))
  )
  assert lora.trainable_count(smol_lora) == 30 * 8 * ((576 + 576) + (576 + 192)) == 460_800
  assert lora.trainable_count(smol_base) > 290 * 460_800

  before = _host(base)
  step = jax.jit(sft.make_lm_step(model, opt), donate_argnums=0)
  batch = _lm_batch()
  losses_ = []
  for _ in range(12):
    state, m = step(state, batch, base)
    losses_.append(float(m["loss"]))
  assert losses_[-1] < losses_[0] - 0.2, losses_
  assert step._cache_size() == 1
  _assert_same(base, before)  # the frozen input is neither donated nor changed
  assert isinstance(state.params, lora.LoraParams)
  assert jax.tree.structure(state.params) == jax.tree.structure(trainable)
  # B moved away from 0 (the adapters learned), A too.
  assert float(jnp.max(jnp.abs(state.params.adapters["layers"]["attn"]["q"]["b"]))) > 0


@pytest.mark.slow  # the default suite keeps the SFT and PPO steps
def test_gradients_reach_only_the_trainable_pytree():
  """The step differentiates the trainable pytree alone: the gradient tree has its structure
  (adapters and head), with no base leaf, and its loss sees the merged model."""
  model, base = _base(Transformer(GPT.replace(head="scalar")).cfg)
  _, lm_base = _base(GPT)
  head = {"score": base["score"]}
  trainable = lora.init_lora_params(SPEC, lm_base, jax.random.PRNGKey(2), dense=head)
  rng = np.random.default_rng(0)
  ids = rng.integers(2, VOCAB, (4, 6)).astype(np.int32)

  def loss(t, frozen):
    return jnp.sum(model.apply({"params": lora.full_params(t, frozen)}, ids) ** 2)

  grads = jax.grad(loss)(trainable, lm_base)
  assert jax.tree.structure(grads) == jax.tree.structure(trainable)
  assert set(grads.dense) == {"score"}
  # B = 0: dL/dA = 0 exactly, dL/dB and the head's gradient are not.
  q = grads.adapters["layers"]["attn"]["q"]
  assert float(jnp.max(jnp.abs(q["a"]))) == 0.0
  assert float(jnp.max(jnp.abs(q["b"]))) > 0
  assert float(jnp.max(jnp.abs(grads.dense["score"]["kernel"]))) > 0


# ----------------------------------------------------------------------------- reward model


def _pairs(rng, b=16, t=8):
  """a is preferred when it carries token 3 at position 2."""
  ids_a = rng.integers(4, VOCAB, (b, t)).astype(np.int32)
  ids_b = rng.integers(4, VOCAB, (b, t)).astype(np.int32)
  ids_a[:, 2] = 3
  flip = rng.random(b) < 0.5
  ids_a[flip], ids_b[flip] = ids_b[flip].copy(), ids_a[flip].copy()
  label = np.where(flip, losses.LABEL_B, losses.LABEL_A).astype(np.int32)
  mask = np.ones((b, t), np.int32)
  mask[:, :1] = 0
  return dict(ids_a=ids_a, mask_a=mask, ids_b=ids_b, mask_b=mask.copy(), label=label)


@pytest.mark.slow  # the default suite keeps the SFT and PPO steps
def test_reward_step_lora_on_an_8_device_mesh_learns_with_adapters_and_a_new_head():
  _, lm_base = _base(GPT)
  rm = Transformer(GPT.replace(head="scalar"))
  mesh = sharding.make_mesh(2, 2, 2)
  base = lora.shard_trainable(lm_base, Transformer(GPT), mesh)  # plain params: by the model
  head = {"score": init_params(rm, jax.random.PRNGKey(5))["score"]}
  spec = lora.LoraSpec(rank=4, alpha=8.0, targets=("q", "v", "up"))
  trainable = lora.shard_trainable(
    lora.init_lora_params(spec, lm_base, jax.random.PRNGKey(4), dense=head), rm, mesh
  )
  hp = reward_lib.RewardHparams(tie_model="bradley_terry")
  opt = reward_lib.reward_optimizer(optax.adam(1e-2), hp)
  state = sharding.commit(reward_lib.init_reward_state(trainable, opt, hp), mesh)
  step = sharding.jit_step(reward_lib.make_reward_step(rm, opt, hp), state, mesh)
  before = _host(base)
  rng = np.random.default_rng(0)
  history = []
  for _ in range(30):
    state, m = step(state, sharding.shard_batch(_pairs(rng), mesh), base)
    history.append(float(m["loss"]))
  assert step._cache_size() == 1
  assert np.mean(history[-5:]) < np.mean(history[:5]) - 0.2, history
  _assert_same(base, before)
  model_params = state.params["model"]
  assert set(model_params.dense) == {"score"}
  assert (
    model_params.adapters["layers"]["attn"]["q"]["a"].sharding.spec
    == trainable.adapters["layers"]["attn"]["q"]["a"].sharding.spec
  )
  held_out = _pairs(np.random.default_rng(9), b=64)
  full = jax.jit(lora.full_params)(model_params, base)
  r_a, r_b = jax.jit(reward_lib.make_pair_scorer(rm))(full, held_out)
  assert float(reward_lib.preference_metrics(r_a, r_b, held_out["label"])["accuracy"]) > 0.8


# ----------------------------------------------------------------------------- DPO


@pytest.mark.slow  # the default suite keeps the SFT and PPO steps
def test_dpo_step_lora_starts_at_zero_implicit_reward_and_learns():
  model, base = _base(GPT)
  n = 4
  rng = np.random.default_rng(0)
  prompts = rng.integers(2, VOCAB, (16, 4)).astype(np.int32)
  good = np.full((16, n), 5, np.int32)
  bad = rng.integers(6, VOCAB, (16, n)).astype(np.int32)
  mask = np.ones((16, 4 + n), np.int32)
  batch = {
    "ids_a": np.concatenate([prompts, good], 1),
    "mask_a": mask,
    "ids_b": np.concatenate([prompts, bad], 1),
    "mask_b": mask,
    "label": np.zeros(16, np.int32),
  }
  ref_a, ref_b = jax.jit(dpo_lib.make_pair_logprobs(model, n))(base, batch)  # the base: reference
  batch.update(ref_logp_a=ref_a, ref_logp_b=ref_b)
  hp = dpo_lib.DPOHparams(beta=0.5)
  opt = dpo_lib.dpo_optimizer(optax.adam(2e-2), hp)
  state = dpo_lib.init_dpo_state(lora.init_lora_params(SPEC, base, jax.random.PRNGKey(0)), opt, hp)
  step = jax.jit(dpo_lib.make_dpo_step(model, opt, hp, n), donate_argnums=0)
  before = _host(base)
  history = []
  for i in range(10):
    state, m = step(state, batch, base)
    if i == 0:  # B = 0: the policy is the reference, log 2 and no margin (the factored
      # forward x W + s (x A) 0 is the base's up to XLA fusing it into another program)
      assert abs(float(m["reward_margin"])) < 1e-6
      assert float(m["loss"]) == pytest.approx(np.log(2.0), abs=1e-6)
    history.append(float(m["loss"]))
  assert history[-1] < history[0] - 0.1, history
  _assert_same(base, before)


# ----------------------------------------------------------------------------- PPO / GRPO

HP = ppo.PPOHparams(
  response_len=5,
  num_minibatches=2,
  epochs=2,
  temperature=1.0,
  eos_id=0,
  pad_id=1,
  kl_target=1.0,
  kl_horizon=100.0,
  recompute_old_logprobs=True,  # log π_old from the full forward, like the reference's
)


def _ppo_setup(algorithm="ppo", group_size=1):
  """A LoRA policy, a LoRA value model and a LoRA reward model (adapters + head) on one base;
  the frozen base is the reference."""
  policy, base = _base(LLAMA)
  rm = Transformer(LLAMA.replace(head="scalar"))
  head = {"score": init_params(rm, jax.random.PRNGKey(7))["score"]}
  rm_params = _random_b(lora.init_lora_params(SPEC, base, jax.random.PRNGKey(8), dense=head))
  params = {"policy": lora.init_lora_params(SPEC, base, jax.random.PRNGKey(9))}
  value_model = None
  if algorithm == "ppo":
    value_model, params["value"] = ppo.init_value_from_reward(rm, rm_params, 1.0, 0.0)
  frozen = ppo.PPOFrozen(base, rm_params, jnp.float32(1.0), jnp.float32(0.0))
  hp = dataclasses.replace(HP, algorithm=algorithm, group_size=group_size)
  ids, mask = _ids(4, 4)
  if group_size == 1:
    ids, mask = np.repeat(ids, 2, 0), np.repeat(mask, 2, 0)
  return policy, value_model, rm, params, frozen, hp, ids, mask


@pytest.mark.parametrize(
  "algorithm,group_size",
  [pytest.param("ppo", 1, id="ppo"), pytest.param("grpo", 2, id="grpo")],
)
@pytest.mark.slow  # a whole compiled iteration: ~25 s on 2 cores
def test_policy_iteration_with_lora_reference_is_the_base(algorithm, group_size):
  policy, value_model, rm, params, frozen, hp, ids, mask = _ppo_setup(algorithm, group_size)
  opt = optax.adam(1e-2)
  state = ppo.init_ppo_state(params, opt, 0.1, jax.random.PRNGKey(0))
  # Optimizer state only for the adapters (and the value head).
  assert lora.optimizer_state_size(state.opt_state)["count"] == 2 * lora.trainable_count(params) + 1
  it = jax.jit(ppo.make_ppo_iteration(policy, value_model, rm, opt, hp), donate_argnums=0)
  before = _host(frozen)
  history = []
  for _ in range(3):
    state, m = it(state, frozen, ids, mask)
    history.append(jax.device_get(m))
  assert it._cache_size() == 1
  # B = 0: the first rollout's policy is the base itself, so its KL to the reference is 0.
  assert history[0]["kl"] == 0.0
  assert history[-1]["kl"] != 0.0
  assert all(np.isfinite(h["loss"]) for h in history)
  assert history[0]["loss"] != history[-1]["loss"]
  assert int(history[-1]["skipped_updates"]) == 0
  _assert_same(frozen, before)
  assert jax.tree.structure(state.params) == jax.tree.structure(params)
  if algorithm == "ppo":
    assert set(state.params["value"].dense) == {"score"}


# ----------------------------------------------------------------------------- export


@pytest.mark.slow  # imports torch and transformers
def test_merged_export_loads_in_transformers_with_equal_logits(tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  model, base = _base(LLAMA)
  trainable = lora.init_lora_params(ALL, base, jax.random.PRNGKey(0))
  trainable = trainable.replace(adapters=_random_b(trainable.adapters))
  out = lora.save_merged(model, trainable, base, tmp_path / "merged", pad_token_id=1)
  hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  ids, mask = _ids()
  ours = np.asarray(model.apply({"params": lora.full_params(trainable, base)}, ids, mask))
  with torch.no_grad():
    theirs = hf(
      input_ids=torch.tensor(ids, dtype=torch.long),
      attention_mask=torch.tensor(mask, dtype=torch.long),
      position_ids=torch.tensor(np.maximum(np.cumsum(mask, 1) - 1, 0), dtype=torch.long),
    ).logits.numpy()
  real = mask.astype(bool)
  np.testing.assert_allclose(ours[real], theirs[real], atol=1e-4, rtol=1e-4)
  base_logits = np.asarray(model.apply({"params": base}, ids, mask))
  assert np.max(np.abs(base_logits - ours)) > 1e-2  # the adapters are in the export


# ----------------------------------------------------------------------------- configs and loops


def test_lora_config_block_errors_name_the_field():
  from rlhf_jax.config_schema import ConfigError
  from rlhf_jax.train import common

  assert common.lora_spec(common.LoraConfig()) is None  # disabled by default
  assert common.lora_spec(common.LoraConfig(enabled=True, targets=("q_proj", "up"))) == (
    lora.LoraSpec(rank=8, alpha=16.0, targets=("q_proj", "up"))
  )
  bad = common.LoraConfig(enabled=True, rank=0, alpha=-1.0, targets=("q", "qkv"))
  errors = common.lora_errors(bad)
  assert any(e.startswith("config.lora.rank=0") for e in errors), errors
  assert any("config.lora.targets: unknown module 'qkv'" in e for e in errors), errors
  with pytest.raises(ConfigError, match=r"config.lora.rank"):
    common.lora_spec(bad)
  # A known name the model lacks (GPT-2 has no gate) is refused when the adapters are made.
  model = Transformer(GPT)
  base = jax.eval_shape(lambda: init_params(model, jax.random.PRNGKey(0)))
  mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  with pytest.raises(ConfigError, match=r"config.lora.targets: 'gate' matches no kernel"):
    common.lora_trainable(
      lora.LoraSpec(targets=("gate",)), base, model, jax.random.PRNGKey(0), mesh
    )


def test_trainable_round_trips_through_npz(tmp_path):
  _, base = _base(LLAMA)
  head = {"score": {"kernel": jnp.ones((16, 1)), "bias": jnp.zeros((1,))}}
  trainable = lora.init_lora_params(SPEC, base, jax.random.PRNGKey(0), dense=head)
  lora.save_trainable(tmp_path / "t.npz", trainable)
  back = lora.load_trainable(tmp_path / "t.npz")
  assert jax.tree.structure(back) == jax.tree.structure(trainable)
  _assert_same(back, trainable)


@pytest.mark.slow  # minutes on 2 cores: the smoke pipeline, twice
def test_pipeline_with_lora_trains_adapters_and_resumes_them(tmp_path):
  """configs/sentiment.py:smoke with ``lora.enabled``: the reward model, value model and
  policy are adapters (+ heads) on the one base; each round exports the merged policy and
  its adapters, and a rerun reads the finished rounds back (adapters included)."""
  import json
  import pathlib

  from rlhf_jax import main as entry
  from rlhf_jax.models import hf

  configs = pathlib.Path(__file__).resolve().parents[1] / "configs"
  cfg = entry.load_config_file(f"{configs / 'sentiment.py'}:smoke")
  cfg.lora.enabled = True
  cfg.lora.targets = ("q", "v", "up")
  cfg.ppo.optimizer.learning_rate = 1e-3
  workdir = tmp_path / "run"
  result = entry.run_task(cfg, str(workdir))
  assert result["round"] == 2 and np.isfinite(result["kl"]) and result["kl"] != 0.0
  adapters = [lora.load_trainable(workdir / f"round_{r}" / "policy_lora.npz") for r in (1, 2)]
  assert adapters[0].dense == {} and adapters[0].scale == 2.0
  q1, q2 = (a.adapters["layers"]["attn"]["q"]["b"] for a in adapters)
  assert float(jnp.max(jnp.abs(q1))) > 0 and float(jnp.max(jnp.abs(q2 - q1))) > 0
  # The merged export is the base plus the adapters.
  _, base = hf.from_pretrained(workdir / "base" / "model")
  _, merged = hf.from_pretrained(workdir / "round_2" / "policy")
  want = lora.full_params(adapters[1], base)
  np.testing.assert_allclose(
    merged["layers"]["attn"]["q"]["kernel"], want["layers"]["attn"]["q"]["kernel"], atol=1e-6
  )
  _assert_same(merged["layers"]["attn"]["k"], base["layers"]["attn"]["k"])
  # The reward model's checkpoints hold adapters and a head, not a copy of the base.
  rm_rows = (workdir / "round_1" / "reward" / "metrics.jsonl").read_text().splitlines()
  assert rm_rows
  again = entry.run_task(cfg, str(workdir))  # every round DONE: read back, adapters included
  assert json.dumps(again, sort_keys=True) == json.dumps(result, sort_keys=True)


@pytest.mark.slow
def test_train_lm_with_lora_checkpoints_only_the_adapters_and_resumes(tmp_path):
  from rlhf_jax.train import common
  from rlhf_jax.train import sft as sft_train

  model, base = _base(LLAMA)
  mesh = sharding.make_mesh(1, -1, 1)
  placed = common.shard_params(model, base, mesh)
  data = _lm_batch(b=16)
  spec = lora.LoraSpec(rank=4, alpha=8.0, targets=("q", "v", "up", "down"))

  def train(workdir, steps):
    return sft_train.train_lm(
      model,
      placed,
      data["ids"],
      data["mask"],
      data["loss_mask"],
      optim_spec=common.OptimSpec(learning_rate=3e-2, anneal=False),
      steps=steps,
      batch_size=8,
      seed=0,
      mesh=mesh,
      workdir=str(workdir),
      log_every=1,
      checkpoint_every=2,
      lora=spec,
    )

  state, last = train(tmp_path / "a", 4)
  assert isinstance(state.params, lora.LoraParams) and int(state.step) == 4
  resumed, _ = train(tmp_path / "a", 6)  # from the step-4 checkpoint: adapters restored
  straight, _ = train(tmp_path / "b", 6)
  jax.tree.map(
    lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6),
    resumed.params,
    straight.params,
  )
  _assert_same(placed, base)


@pytest.mark.slow  # a minute or two on 2 cores: one round of the smoke pipeline
def test_pipeline_dense_reward_model_beside_lora_policy(tmp_path, monkeypatch):
  """``reward.dense`` with ``lora.enabled``: the reward model fine-tunes its whole trunk
  (plain params, trunk moved off the base) while the policy still trains adapters on the
  frozen base, and PPO scores with the dense reward model."""
  import pathlib

  from rlhf_jax import main as entry
  from rlhf_jax.models import hf
  from rlhf_jax.train import reward as reward_train

  configs = pathlib.Path(__file__).resolve().parents[1] / "configs"
  cfg = entry.load_config_file(f"{configs / 'sentiment.py'}:smoke")
  cfg.rounds = 1
  cfg.lora.enabled = True
  cfg.lora.targets = ("q", "v", "up")
  cfg.reward.dense = True
  cfg.ppo.optimizer.learning_rate = 1e-3
  seen = []
  real = reward_train.train_reward_model

  def spy(*args, **kwargs):
    params, ev = real(*args, **kwargs)
    seen.append((kwargs["lora"], params))
    return params, ev

  monkeypatch.setattr(reward_train, "train_reward_model", spy)
  workdir = tmp_path / "run"
  result = entry.run_task(cfg, str(workdir))
  assert result["round"] == 1 and np.isfinite(result["kl"]) and result["kl"] != 0.0
  ((spec_seen, rm),) = seen
  assert spec_seen is None and not lora.is_lora(rm)
  _, base = hf.from_pretrained(workdir / "base" / "model")
  moved = np.max(
    np.abs(np.asarray(rm["layers"]["attn"]["k"]["kernel"]) - base["layers"]["attn"]["k"]["kernel"])
  )
  assert moved > 0  # a dense trunk: k has no adapter, yet it trained
  policy = lora.load_trainable(workdir / "round_1" / "policy_lora.npz")
  assert set(policy.adapters["layers"]["attn"]) == {"q", "v"}
