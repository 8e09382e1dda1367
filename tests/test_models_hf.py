"""Hugging Face bridge: logit parity with PyTorch transformers, export round trips, errors.

Tiny random checkpoints are created with ``transformers`` in tmp dirs (no network). Run with
``-s`` to see the measured max |logit difference| per architecture.
"""

import copy
import functools
import json
import os
import re
import shutil
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
tr = pytest.importorskip("transformers")
from safetensors.numpy import load_file, save_file  # noqa: E402

from rlhf_jax.models import (  # noqa: E402
  RopeScaling,
  Transformer,
  TransformerConfig,
  from_pretrained,
  init_params,
  save_pretrained,
)
from rlhf_jax.models import hf as hf_bridge  # noqa: E402

TOL = 1e-4
V = 100
PAD = 0

tr.logging.set_verbosity_error()


def _batch():
  """Left-padded ids_BT and mask_BT (pad id 0 never appears among real tokens)."""
  rng = np.random.default_rng(0)
  ids = rng.integers(1, V, size=(3, 10))
  mask = np.ones((3, 10), np.int64)
  mask[1, :3] = 0
  mask[2, :6] = 0
  return np.where(mask == 1, ids, PAD), mask


def _perturb_torch(m, seed):
  """Random norm scales/biases too (HF inits them to 1/0, which would hide mix-ups)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in m.parameters():
      if p.ndim == 1:
        p.add_(0.2 * torch.randn(p.shape, generator=g))
  return m.eval()


def _hf_forward(m, ids, mask):
  """HF output with position ids = cumsum(mask) - 1, like ours.

  HF's plain forward uses positions 0..T-1 even under left padding; RoPE models are
  invariant to that shift, GPT-2's learned positions are not.
  """
  pos = np.maximum(np.cumsum(mask, -1) - 1, 0)
  with torch.no_grad():
    out = m(
      input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=torch.tensor(pos)
    )
  return out.logits.float().numpy()


@functools.partial(jax.jit, static_argnums=0)
def _apply(model, params, ids, mask):
  return model.apply({"params": params}, ids, mask)


def _our_forward(model, params, ids, mask):
  return np.asarray(_apply(model, params, jnp.asarray(ids), jnp.asarray(mask)))


def _max_diff(model, params, m, ids, mask):
  """Max |ours - HF| over real positions (LM) or at the pooled last token (scalar)."""
  theirs = _hf_forward(m, ids, mask)
  ours = _our_forward(model, params, ids, mask)
  if model.cfg.head == "scalar":
    return float(np.abs(ours[:, -1] - theirs[:, 0]).max()), float(np.abs(theirs).max())
  real = mask.astype(bool)
  return float(np.abs(ours - theirs)[real].max()), float(np.abs(theirs[real]).max())


_LLAMA_KW = dict(
  vocab_size=V,
  hidden_size=32,
  intermediate_size=64,
  num_hidden_layers=2,
  num_attention_heads=4,
  initializer_range=0.2,
  pad_token_id=PAD,
  bos_token_id=1,
  eos_token_id=2,
)
_GPT2_KW = dict(
  vocab_size=V,
  n_embd=32,
  n_layer=2,
  n_head=4,
  n_positions=32,
  initializer_range=0.2,
  pad_token_id=PAD,
  bos_token_id=1,
  eos_token_id=2,
)
# Llama-3 scaling with theta=100, head_dim 8: wavelengths 6.3 (kept), 19.9 (blended),
# 62.8 and 199 (divided by factor) around original_max_position_embeddings=32.
_LLAMA3 = {
  "rope_type": "llama3",
  "factor": 4.0,
  "low_freq_factor": 1.0,
  "high_freq_factor": 4.0,
  "original_max_position_embeddings": 32,
}

HF_CASES = {
  "GPT2LMHeadModel": lambda: tr.GPT2LMHeadModel(tr.GPT2Config(**_GPT2_KW)),
  "LlamaForCausalLM[gqa,untied,llama3]": lambda: tr.LlamaForCausalLM(
    tr.LlamaConfig(
      num_key_value_heads=2,
      tie_word_embeddings=False,
      rope_theta=100.0,
      rope_scaling=dict(_LLAMA3),
      **_LLAMA_KW,
    )
  ),
  "LlamaForCausalLM[tied,bias,linear]": lambda: tr.LlamaForCausalLM(
    tr.LlamaConfig(
      num_key_value_heads=4,
      tie_word_embeddings=True,
      attention_bias=True,
      mlp_bias=True,
      rope_scaling={"rope_type": "linear", "factor": 2.0},
      **_LLAMA_KW,
    )
  ),
  "Qwen2ForCausalLM": lambda: tr.Qwen2ForCausalLM(
    tr.Qwen2Config(num_key_value_heads=2, **_LLAMA_KW)
  ),
  "MistralForCausalLM": lambda: tr.MistralForCausalLM(
    tr.MistralConfig(num_key_value_heads=1, sliding_window=16, **_LLAMA_KW)
  ),
  "GPT2ForSequenceClassification": lambda: tr.GPT2ForSequenceClassification(
    tr.GPT2Config(num_labels=1, **_GPT2_KW)
  ),
  "LlamaForSequenceClassification": lambda: tr.LlamaForSequenceClassification(
    tr.LlamaConfig(num_labels=1, num_key_value_heads=2, **_LLAMA_KW)
  ),
}


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
  """name -> (checkpoint dir, torch model), built once per module."""
  torch.manual_seed(0)
  root = tmp_path_factory.mktemp("hf")
  out = {}
  for i, (name, build) in enumerate(HF_CASES.items()):
    m = _perturb_torch(build(), seed=i)
    path = root / f"case{i}"
    m.save_pretrained(path)
    out[name] = (path, m)
  return out


def _load(path, **kw):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Mistral's sliding-window note; tested separately
    return from_pretrained(path, **kw)


@pytest.mark.parametrize("name", list(HF_CASES))
def test_logit_parity_with_transformers(hf_models, name):
  path, m = hf_models[name]
  model, params = _load(path)
  ids, mask = _batch()
  diff, scale = _max_diff(model, params, m, ids, mask)
  print(f"\n[parity] {name}: max|ours - HF| = {diff:.2e} (max|HF| = {scale:.2f})")
  assert scale > 0.1  # outputs are not trivially small
  assert diff <= TOL


def test_config_mapping(hf_models):
  model, _ = _load(hf_models["LlamaForCausalLM[gqa,untied,llama3]"][0])
  cfg = model.cfg
  assert (cfg.norm, cfg.mlp, cfg.position, cfg.activation) == ("rmsnorm", "swiglu", "rope", "silu")
  assert (cfg.n_kv_heads, cfg.tie_embeddings, cfg.qkv_bias, cfg.out_bias) == (
    2,
    False,
    False,
    False,
  )
  assert cfg.rope_theta == 100.0
  assert cfg.rope_scaling == RopeScaling(
    kind="llama3",
    factor=4.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=32,
  )
  qwen, _ = _load(hf_models["Qwen2ForCausalLM"][0])
  assert (qwen.cfg.qkv_bias, qwen.cfg.out_bias, qwen.cfg.mlp_bias) == (True, False, False)
  gpt2, _ = _load(hf_models["GPT2LMHeadModel"][0])
  assert (gpt2.cfg.norm, gpt2.cfg.position, gpt2.cfg.activation, gpt2.cfg.max_len) == (
    "layernorm",
    "learned",
    "gelu_tanh",
    32,
  )
  cls, params = _load(hf_models["LlamaForSequenceClassification"][0])
  assert cls.cfg.head == "scalar" and "score" in params and "lm_head" not in params


def test_rope_scaling_changes_outputs(hf_models):
  """Guards the llama3 parity case against being vacuous."""
  path, _ = hf_models["LlamaForCausalLM[gqa,untied,llama3]"]
  model, params = _load(path)
  ids, mask = _batch()
  plain = Transformer(model.cfg.replace(rope_scaling=None))
  diff = np.abs(_our_forward(model, params, ids, mask) - _our_forward(plain, params, ids, mask))
  assert diff[mask.astype(bool)].max() > 1e-2


def test_mistral_sliding_window_warns_and_caps_max_len(hf_models):
  with pytest.warns(UserWarning, match="sliding_window=16"):
    model, _ = from_pretrained(hf_models["MistralForCausalLM"][0])
  assert model.cfg.max_len == 16


def test_bfloat16_checkpoint(tmp_path, hf_models):
  _, m = hf_models["LlamaForCausalLM[gqa,untied,llama3]"]
  m16 = copy.deepcopy(m).to(torch.bfloat16)
  m16.save_pretrained(tmp_path)
  assert load_file(str(tmp_path / "model.safetensors"))["lm_head.weight"].dtype.name == "bfloat16"
  model, params = from_pretrained(tmp_path)
  q_hf = m16.model.layers[1].self_attn.q_proj.weight.detach().float().numpy()
  np.testing.assert_array_equal(np.asarray(params["layers"]["attn"]["q"]["kernel"][1]), q_hf.T)
  assert params["embed"]["embedding"].dtype == jnp.float32
  ids, mask = _batch()
  # HF reading the same bf16 file into float32 (not m16.float(): that keeps a bf16-rounded
  # RoPE inv_freq buffer).
  m32 = tr.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
  diff, _ = _max_diff(model, params, m32, ids, mask)
  print(f"\n[parity] bf16 checkpoint, f32 compute: {diff:.2e}")
  assert diff <= TOL
  model16, params16 = from_pretrained(tmp_path, dtype="bfloat16", param_dtype="bfloat16")
  assert params16["embed"]["embedding"].dtype == jnp.bfloat16
  out16 = _our_forward(model16, params16, ids, mask)
  out32 = _our_forward(model, params, ids, mask)
  assert np.abs(out16 - out32)[mask.astype(bool)].max() < 0.1 * np.abs(out32).max()


def test_sharded_hf_checkpoint_loads(tmp_path, hf_models):
  path, m = hf_models["LlamaForCausalLM[gqa,untied,llama3]"]
  m.save_pretrained(tmp_path, max_shard_size="20KB")
  assert (tmp_path / "model.safetensors.index.json").is_file()
  assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
  _, sharded = from_pretrained(tmp_path)
  _, single = _load(path)
  jax.tree.map(np.testing.assert_array_equal, sharded, single)


def test_head_override(hf_models):
  path, _ = hf_models["LlamaForCausalLM[gqa,untied,llama3]"]
  _, lm_params = _load(path)
  with pytest.raises(ValueError, match="pass rng="):
    _load(path, head="scalar")
  model, params = _load(path, head="scalar", rng=jax.random.PRNGKey(1))
  assert model.cfg.head == "scalar" and "lm_head" not in params
  assert params["score"]["kernel"].shape == (32, 1)
  np.testing.assert_array_equal(
    params["layers"]["mlp"]["up"]["kernel"], lm_params["layers"]["mlp"]["up"]["kernel"]
  )
  model, params = _load(path, head="both", rng=jax.random.PRNGKey(1))
  ids, mask = _batch()
  logits, scores = _apply(model, params, jnp.asarray(ids), jnp.asarray(mask))
  assert logits.shape == (3, 10, V) and scores.shape == (3, 10)


# ------------------------------------------------------------------------------------------
# Export: our params -> save_pretrained -> transformers / from_pretrained
# ------------------------------------------------------------------------------------------

_OUR_GPT2 = dict(vocab_size=V, d_model=32, n_layers=2, n_heads=4, max_len=32, init_std=0.2)
_OUR_LLAMA = dict(
  vocab_size=V,
  d_model=32,
  n_layers=2,
  n_heads=4,
  d_ff=64,
  max_len=64,
  norm="rmsnorm",
  mlp="swiglu",
  activation="silu",
  position="rope",
  qkv_bias=False,
  out_bias=False,
  mlp_bias=False,
  init_std=0.2,
)
EXPORT_CASES = {
  "gpt2": TransformerConfig(**_OUR_GPT2),
  "gpt2-scalar": TransformerConfig(**_OUR_GPT2, head="scalar"),
  "llama-gqa-untied-llama3": TransformerConfig(
    **_OUR_LLAMA,
    n_kv_heads=2,
    tie_embeddings=False,
    rope_theta=100.0,
    rope_scaling=RopeScaling(kind="llama3", factor=4.0, original_max_position_embeddings=32),
  ),
  "llama-headdim-bias-linear-gelu": TransformerConfig(
    **{
      **_OUR_LLAMA,
      "qkv_bias": True,
      "out_bias": True,
      "mlp_bias": True,
      "activation": "gelu_tanh",
    },
    head_dim=16,
    n_kv_heads=2,
    rope_scaling=RopeScaling(kind="linear", factor=2.0),
  ),
  "qwen2-tied": TransformerConfig(**{**_OUR_LLAMA, "qkv_bias": True}, n_kv_heads=1),
  "llama-scalar": TransformerConfig(
    **_OUR_LLAMA, n_kv_heads=2, head="scalar", tie_embeddings=False
  ),
}
EXPECTED_ARCH = {
  "gpt2": "GPT2LMHeadModel",
  "gpt2-scalar": "GPT2ForSequenceClassification",
  "llama-gqa-untied-llama3": "LlamaForCausalLM",
  "llama-headdim-bias-linear-gelu": "LlamaForCausalLM",
  "qwen2-tied": "Qwen2ForCausalLM",
  "llama-scalar": "LlamaForSequenceClassification",
}


@functools.lru_cache(maxsize=None)
def _random_params(cfg, seed=0):
  """Random params with the structure of ``init_params`` (from ``jax.eval_shape``, which is
  much faster than running the init): norm scales 1 + 0.2 N(0, 1), everything else
  0.2 N(0, 1), so unit norms and zero biases cannot hide a mix-up."""
  abstract = jax.eval_shape(lambda: init_params(Transformer(cfg), jax.random.PRNGKey(0)))
  rng = np.random.default_rng(seed)

  def leaf(path, x):
    base = 1.0 if path[-1].key == "scale" else 0.0
    return jnp.asarray(base + 0.2 * rng.standard_normal(x.shape), x.dtype)

  return jax.tree_util.tree_map_with_path(leaf, abstract)


@pytest.mark.parametrize("name", list(EXPORT_CASES))
def test_export_round_trip(tmp_path, name):
  cfg = EXPORT_CASES[name]
  model = Transformer(cfg)
  params = _random_params(cfg)
  out = tmp_path / "export"
  save_pretrained(
    model,
    params,
    out,
    pad_token_id=PAD,
    max_shard_size=(20_000 if name == "llama-gqa-untied-llama3" else None),
  )
  written = json.loads((out / "config.json").read_text())
  assert written["architectures"] == [EXPECTED_ARCH[name]]
  auto = tr.AutoModelForSequenceClassification if cfg.head == "scalar" else tr.AutoModelForCausalLM
  m = auto.from_pretrained(out).eval()
  assert type(m).__name__ == EXPECTED_ARCH[name]
  ids, mask = _batch()
  diff, scale = _max_diff(model, params, m, ids, mask)
  print(f"\n[export parity] {name} -> {EXPECTED_ARCH[name]}: {diff:.2e} (max|HF| = {scale:.2f})")
  assert scale > 0.1 and diff <= TOL
  loaded_model, loaded = from_pretrained(out)
  assert loaded_model.cfg == cfg
  jax.tree.map(np.testing.assert_array_equal, loaded, params)


def test_sharded_export(tmp_path):
  cfg = EXPORT_CASES["llama-gqa-untied-llama3"]
  save_pretrained(Transformer(cfg), _random_params(cfg), tmp_path / "out", max_shard_size=20_000)
  index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
  assert len(set(index["weight_map"].values())) > 1
  assert not (tmp_path / "out" / "model.safetensors").exists()


def test_bfloat16_export(tmp_path):
  cfg = EXPORT_CASES["qwen2-tied"]
  params = _random_params(cfg)
  save_pretrained(Transformer(cfg), params, tmp_path / "out", dtype="bfloat16")
  assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"
  m = tr.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
  assert m.model.embed_tokens.weight.dtype == torch.bfloat16
  _, loaded = from_pretrained(tmp_path / "out")
  want = jax.tree.map(lambda x: x.astype(jnp.bfloat16).astype(jnp.float32), params)
  jax.tree.map(np.testing.assert_array_equal, loaded, want)


def test_export_with_tokenizer(tmp_path):
  from tokenizers import Tokenizer, models, pre_tokenizers

  vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, V)}}
  raw = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
  raw.pre_tokenizer = pre_tokenizers.Whitespace()
  tok = tr.PreTrainedTokenizerFast(
    tokenizer_object=raw, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
  )
  cfg = EXPORT_CASES["llama-scalar"]
  save_pretrained(Transformer(cfg), _random_params(cfg), tmp_path / "rm", tokenizer=tok)
  written = json.loads((tmp_path / "rm" / "config.json").read_text())
  assert (written["pad_token_id"], written["bos_token_id"], written["eos_token_id"]) == (0, 1, 2)
  loaded = hf_bridge.load_tokenizer(tmp_path / "rm")
  assert loaded("w5 w7", add_special_tokens=False)["input_ids"] == [5, 7]
  assert (loaded.pad_token_id, loaded.eos_token_id) == (0, 2)


# ------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------


def _copy(src, dst):
  shutil.copytree(src, dst)
  return dst


def _edit_tensors(path, edit):
  file = str(path / "model.safetensors")
  tensors = dict(load_file(file))
  edit(tensors)
  save_file(tensors, file, metadata={"format": "pt"})


def _edit_config(path, **changes):
  cfg = json.loads((path / "config.json").read_text())
  cfg.update(changes)
  (path / "config.json").write_text(json.dumps(cfg))


@pytest.fixture
def gpt2_copy(hf_models, tmp_path):
  return _copy(hf_models["GPT2LMHeadModel"][0], tmp_path / "ckpt")


def test_error_unsupported_architecture(gpt2_copy):
  _edit_config(gpt2_copy, architectures=["BertForMaskedLM"])
  with pytest.raises(ValueError, match="unsupported architecture 'BertForMaskedLM'"):
    from_pretrained(gpt2_copy)


def test_error_missing_safetensors(gpt2_copy):
  os.remove(gpt2_copy / "model.safetensors")
  with pytest.raises(FileNotFoundError, match="no model.safetensors"):
    from_pretrained(gpt2_copy)
  (gpt2_copy / "pytorch_model.bin").write_bytes(b"\0")
  with pytest.raises(FileNotFoundError, match=r"only \['pytorch_model.bin'\].*safetensors only"):
    from_pretrained(gpt2_copy)


def test_error_missing_config(gpt2_copy):
  os.remove(gpt2_copy / "config.json")
  with pytest.raises(FileNotFoundError, match="config.json"):
    from_pretrained(gpt2_copy)


def test_error_missing_tensor(gpt2_copy):
  _edit_tensors(gpt2_copy, lambda t: t.pop("transformer.h.1.mlp.c_fc.bias"))
  with pytest.raises(ValueError, match=r"missing.*'transformer\.h\.1\.mlp\.c_fc\.bias'"):
    from_pretrained(gpt2_copy)


def test_error_wrong_shape(gpt2_copy):
  def edit(t):
    t["transformer.h.0.attn.c_proj.weight"] = np.zeros((32, 31), np.float32)

  _edit_tensors(gpt2_copy, edit)
  with pytest.raises(
    ValueError,
    match=r"model\.safetensors: tensor 'transformer\.h\.0\.attn\."
    r"c_proj\.weight' has shape \[32, 31\], expected \[32, 32\]",
  ):
    from_pretrained(gpt2_copy)


def test_error_unexpected_tensor_and_ignored_buffers(gpt2_copy):
  def add_buffers(t):
    t["transformer.h.0.attn.bias"] = np.ones((1, 1, 32, 32), np.float32)
    t["transformer.h.0.attn.masked_bias"] = np.ones((), np.float32)
    t["lm_head.weight"] = t["transformer.wte.weight"].copy()  # tied duplicate

  _edit_tensors(gpt2_copy, add_buffers)
  from_pretrained(gpt2_copy)  # known buffers are skipped
  _edit_tensors(
    gpt2_copy, lambda t: t.update({"transformer.h.0.attn.extra": np.ones(3, np.float32)})
  )
  with pytest.raises(ValueError, match=r"unexpected tensor 'transformer\.h\.0\.attn\.extra'"):
    from_pretrained(gpt2_copy)


def test_bare_gpt2_layout_loads(gpt2_copy, hf_models):
  """The original GPT-2 hub layout: no 'transformer.' prefix, causal-mask buffers, no lm_head."""

  def strip(t):
    for name in list(t):
      t[name.removeprefix("transformer.")] = t.pop(name)
    t["h.1.attn.bias"] = np.ones((1, 1, 32, 32), np.float32)

  _edit_tensors(gpt2_copy, strip)
  _, bare = from_pretrained(gpt2_copy)
  _, ref = _load(hf_models["GPT2LMHeadModel"][0])
  jax.tree.map(np.testing.assert_array_equal, bare, ref)


def test_error_num_labels(hf_models, tmp_path):
  path = _copy(hf_models["GPT2ForSequenceClassification"][0], tmp_path / "cls")
  _edit_config(path, id2label={"0": "A", "1": "B"}, label2id={"A": 0, "B": 1})
  with pytest.raises(ValueError, match="num_labels=2.*num_labels == 1"):
    from_pretrained(path)


def test_error_unsupported_rope_type(hf_models, tmp_path):
  path = _copy(hf_models["Qwen2ForCausalLM"][0], tmp_path / "q")
  _edit_config(path, rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4})
  with pytest.raises(ValueError, match="rope type 'yarn' is not supported"):
    from_pretrained(path)


def test_legacy_rope_fields(hf_models, tmp_path):
  """transformers 4.x config.json: top-level rope_theta and rope_scaling with 'type'."""
  path = _copy(hf_models["LlamaForCausalLM[tied,bias,linear]"][0], tmp_path / "l")
  cfg = json.loads((path / "config.json").read_text())
  cfg.pop("rope_parameters")
  cfg.update(rope_theta=500.0, rope_scaling={"type": "linear", "factor": 3.0})
  (path / "config.json").write_text(json.dumps(cfg))
  model, _ = from_pretrained(path)
  assert model.cfg.rope_theta == 500.0
  assert model.cfg.rope_scaling == RopeScaling(kind="linear", factor=3.0)


def test_export_errors(tmp_path):
  cfg = EXPORT_CASES["gpt2"]
  params = _random_params(cfg)
  with pytest.raises(ValueError, match="head='both'"):
    save_pretrained(Transformer(cfg.replace(head="both")), params, tmp_path / "a")
  with pytest.raises(ValueError, match="pad_token_id"):
    save_pretrained(Transformer(cfg.replace(head="scalar")), params, tmp_path / "b")
  with pytest.raises(ValueError, match="TransformerConfig.norm='rmsnorm'"):
    save_pretrained(Transformer(cfg.replace(norm="rmsnorm")), params, tmp_path / "c")
  with pytest.raises(
    ValueError,
    match=r"params\['layers'\]\['mlp'\]\['down'\]\['kernel'\] has"
    r" shape \[2, 128, 32\], expected \[2, 64, 32\]",
  ):
    save_pretrained(Transformer(cfg.replace(d_ff=64)), params, tmp_path / "d")
  assert list(tmp_path.iterdir()) == []  # nothing written by a rejected save


def test_save_is_atomic(tmp_path, monkeypatch):
  cfg = EXPORT_CASES["gpt2"]
  model, params = Transformer(cfg), _random_params(cfg)
  out = tmp_path / "model"
  save_pretrained(model, params, out)
  before = {p.name: p.read_bytes() for p in out.iterdir()}
  with pytest.raises(FileExistsError, match="overwrite=False"):
    save_pretrained(model, params, out, overwrite=False)

  def broken(*args, **kwargs):
    raise OSError("disk full")

  monkeypatch.setattr(hf_bridge, "save_file", broken)
  with pytest.raises(OSError, match="disk full"):
    save_pretrained(model, _random_params(cfg, seed=5), out)
  assert {p.name: p.read_bytes() for p in out.iterdir()} == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp dirs left
  monkeypatch.undo()
  new_params = _random_params(cfg, seed=5)
  save_pretrained(model, new_params, out)  # replaces the previous export
  _, loaded = from_pretrained(out)
  jax.tree.map(np.testing.assert_array_equal, loaded, new_params)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
  (out / "notes.txt").write_text("not a model file")
  with pytest.raises(FileExistsError, match=r"notes\.txt"):
    save_pretrained(model, params, out)
  assert (out / "notes.txt").is_file()


def test_error_non_finite_weights_name_the_tensor(gpt2_copy):
  def edit(t):
    w = t["transformer.h.0.mlp.c_fc.weight"].copy()
    w[0, 0], w[1, 1] = np.nan, np.inf
    t["transformer.h.0.mlp.c_fc.weight"] = w

  _edit_tensors(gpt2_copy, edit)
  with pytest.raises(
    ValueError,
    match=r"model\.safetensors: tensor 'transformer\.h\.0\.mlp\."
    r"c_fc\.weight' holds 1 NaN and 1 infinite values",
  ):
    from_pretrained(gpt2_copy)


@pytest.mark.parametrize("damage", ["truncated", "garbled"])
def test_error_damaged_safetensors_names_the_file(gpt2_copy, damage):
  file = gpt2_copy / "model.safetensors"
  data = file.read_bytes()
  if damage == "truncated":
    file.write_bytes(data[: len(data) // 2])
  else:
    file.write_bytes(b"\xff" * 16 + data[16:])
  with pytest.raises(ValueError, match=re.escape(str(file)) + r".*(truncated or corrupt)"):
    from_pretrained(gpt2_copy)


def test_export_refuses_non_finite_params(tmp_path):
  cfg = EXPORT_CASES["gpt2"]
  params = jax.tree.map(np.array, _random_params(cfg))
  leaves = jax.tree_util.tree_leaves_with_path(params)
  _, leaf = leaves[len(leaves) // 2]
  leaf.reshape(-1)[0] = np.nan
  with pytest.raises(ValueError, match=r"save_pretrained\(.*out\): tensor '.*' holds 1 NaN"):
    save_pretrained(Transformer(cfg), params, tmp_path / "out", pad_token_id=PAD)
  assert not (tmp_path / "out").exists()
