"""Pretraining / supervised fine-tuning loop (``task = "sft"``).

Data sources:

* ``"corpus"``: the built-in English corpus (fetched through the package managers), with a
  byte-level BPE tokenizer trained on it — causal-LM pretraining on packed rows;
* ``"jsonl"``: one record per line, either ``{"text": ...}`` (packed, loss on every token)
  or ``{"prompt": ..., "response": ...}`` (one row per pair, loss on response tokens only),
  tokenised with the tokenizer of ``model.path``.

Checkpoints (orbax, async) every ``checkpoint_every`` steps and on SIGTERM; a re-run resumes
the same trajectory (the batch of step i is a function of seed and i). The final model is
written in Hugging Face layout to ``workdir/model``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import numpy as np

from rlhf_jax import data as data_lib
from rlhf_jax import lora as lora_lib
from rlhf_jax import sft as sft_lib
from rlhf_jax import sharding
from rlhf_jax.train import common
from rlhf_jax.train.metrics import fetch

__all__ = ["DataSpec", "Config", "check_config", "run", "load_sft_rows", "train_lm", "step_rows"]

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DataSpec:
  source: str = "corpus"  # "corpus" | "jsonl"
  path: str = ""  # jsonl file
  cache_dir: str = ""  # corpus downloads ("" -> $RLHF_JAX_DATA or ~/.cache/rlhf_jax)
  sources: Tuple[str, ...] = ("fortunes", "bible", "austen", "shakespeare")
  vocab_size: int = 8192  # tokenizer trained on the corpus
  seq_len: int = 64


@dataclasses.dataclass(frozen=True)
class Config:
  model: common.ModelSpec = common.ModelSpec()
  data: DataSpec = DataSpec()
  optimizer: common.OptimSpec = common.OptimSpec(
    name="adamw", learning_rate=1e-3, warmup_steps=50, eps=1e-8, max_grad_norm=1.0
  )
  steps: int = 1000
  batch_size: int = 32
  mesh: common.MeshSpec = common.MeshSpec()
  seed: int = 0
  log_every: int = 50
  checkpoint_every: int = 500
  keep_checkpoints: int = 3
  max_skipped_fraction: float = 0.1  # stop when more updates are skipped as non-finite
  lora: common.LoraConfig = common.LoraConfig()  # adapters on the frozen model instead


# Fields a rerun of a workdir may change (see rlhf_jax.main): those of the loop, caches.
RESULT_NEUTRAL_FIELDS = common.LOOP_NEUTRAL_FIELDS + ("data.cache_dir",)

_BOUNDS = {
  **common.LOOP_BOUNDS,
  **{name: ">= 1" for name in ("steps", "batch_size", "data.vocab_size")},
  "data.seq_len": ">= 2",
}


def check_config(cfg: Config) -> None:
  """Start-up checks of an SFT config (bounds, specs, the data source), before any work:
  raises ``ConfigError``, one line per problem naming the field."""
  errors = common.spec_errors(
    cfg, _BOUNDS, optimizers=("optimizer",), meshes=("mesh",), models=("model",)
  )
  errors += common.lora_errors(cfg.lora)
  if cfg.data.source not in ("corpus", "jsonl"):
    errors.append(f"config.data.source={cfg.data.source!r}: expected 'corpus' or 'jsonl'")
  elif cfg.data.source == "jsonl" and not cfg.model.path:
    errors.append(
      "config.model.path: data.source='jsonl' needs a checkpoint directory with tokenizer files"
    )
  if errors:
    raise common.ConfigError("\n".join(errors))


def load_sft_rows(spec: DataSpec, tokenizer) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``(ids, mask, loss_mask)`` rows ``[N, seq_len]`` from a JSONL file; errors name the line."""
  if not spec.path or not os.path.isfile(spec.path):
    raise FileNotFoundError(f"data.path={spec.path!r} is not a file")
  texts, pairs = [], []
  for loc, rec in data_lib.read_jsonl(spec.path):
    if isinstance(rec, dict) and isinstance(rec.get("text"), str):
      texts.append(rec["text"])
    elif (
      isinstance(rec, dict)
      and isinstance(rec.get("prompt"), str)
      and isinstance(rec.get("response"), str)
    ):
      pairs.append((rec["prompt"], rec["response"]))
    else:
      raise ValueError(f'{loc}: expected {{"text": str}} or {{"prompt": str, "response": str}}')
  if texts and pairs:
    raise ValueError(f"{spec.path}: mixes 'text' records and 'prompt'/'response' records")
  if texts:
    ids, mask = data_lib.pack_texts(tokenizer, texts, spec.seq_len, drop_remainder=False)
    return ids, mask, mask.copy()
  if not pairs:
    raise ValueError(f"{spec.path}: no records")
  n, t = len(pairs), spec.seq_len
  ids = np.full((n, t), tokenizer.pad_token_id, np.int32)
  mask = np.zeros((n, t), np.int32)
  loss_mask = np.zeros((n, t), np.int32)
  for i, (prompt, response) in enumerate(pairs):
    p = tokenizer.encode(prompt, add_special_tokens=False)
    r = tokenizer.encode(response, add_special_tokens=False) + [tokenizer.eos_token_id]
    seq = (p + r)[:t]
    ids[i, : len(seq)] = seq
    mask[i, : len(seq)] = 1
    loss_mask[i, len(p) : len(seq)] = 1
  return ids, mask, loss_mask


def step_rows(n_rows: int, batch_size: int, seed: int) -> Callable[[int], np.ndarray]:
  """The rows of step ``i``: a fresh draw seeded by ``(seed, i)``, so a resumed run takes the
  same batches."""
  return lambda i: np.random.default_rng([seed, i]).integers(0, n_rows, batch_size)


def train_lm(
  model,
  params,
  ids: np.ndarray,
  mask: np.ndarray,
  loss_mask: np.ndarray,
  *,
  optim_spec: common.OptimSpec,
  steps: int,
  batch_size: int,
  seed: int,
  mesh,
  workdir,
  log_every: int = 50,
  checkpoint_every: int = 500,
  keep_checkpoints: int = 3,
  max_skipped_fraction: float = 0.1,
  desc: str = "sft",
  batch_rows: Optional[Callable[[int], np.ndarray]] = None,
  lora: Optional[lora_lib.LoraSpec] = None,
) -> Tuple[sft_lib.LMState, Dict[str, Any]]:
  """The language-model training loop: ``steps`` steps on rows ``[N, T]`` of ``ids``,
  ``mask`` and ``loss_mask``, from ``params`` of ``model``.

  Checkpoints go to ``workdir/checkpoints`` every ``checkpoint_every`` steps, at the end and
  on SIGTERM; a re-run resumes the same trajectory (the batch of step i is
  ``batch_rows(i)``, by default :func:`step_rows`; every process draws the same rows and reads
  only those its devices hold). Metrics every ``log_every`` steps go to
  ``workdir/metrics.jsonl``. Returns the final state and the last logged metrics.

  With ``lora`` the state trains adapters on the frozen ``params`` (an input of every step,
  never donated): ``state.params`` is a :class:`rlhf_jax.lora.LoraParams`, the model's params
  are ``lora.full_params(state.params, params)``.

  Raises:
    DivergenceError: more than ``max_skipped_fraction`` of the updates were skipped.
    rlhf_jax.checkpoint.Preempted: stopped by a signal after saving a checkpoint.
  """
  rows_of = batch_rows or step_rows(len(ids), batch_size, seed)
  optimizer, schedule = common.make_optimizer(optim_spec, steps)
  base, trainable = None, params
  if lora is not None:
    key = jax.random.fold_in(jax.random.PRNGKey(seed), 1)
    base, trainable = params, common.lora_trainable(lora, params, model, key, mesh)
  state = sharding.commit(sft_lib.init_lm_state(trainable, optimizer), mesh)
  step = sharding.jit_step(sft_lib.make_lm_step(model, optimizer), state, mesh)
  loop = common.TrainLoop(
    workdir,
    keep_checkpoints,
    checkpoint_every,
    steps,
    desc,
    max_skipped_fraction=max_skipped_fraction,
  )
  state, start = loop.restore(state)
  last: Dict[str, Any] = {}
  with loop:
    for i in range(start, steps):
      # the same global rows in every process; each reads only those its devices hold
      batch = sharding.shard_rows(
        {"ids": ids, "mask": mask, "loss_mask": loss_mask}, rows_of(i), mesh
      )
      state, metrics = step(state, batch, base)
      done = i + 1
      if done % log_every == 0 or done == steps:
        last = dict(fetch(metrics), learning_rate=float(schedule(done)))
        loop.log(done, last, loss=last["loss"])
      if loop.end_step(done, state):
        break
  loop.close()
  return state, last


def run(cfg: Config, workdir: str) -> Dict[str, Any]:
  from rlhf_jax.models import hf

  check_config(cfg)
  common.check_output_paths(
    "workdir",
    [os.path.join(workdir, d) for d in ("model", "tokenizer", "checkpoints")],
    [os.path.join(workdir, "metrics.jsonl")],
  )
  mesh = common.build_mesh(cfg.mesh)
  common.check_batch_sizes(mesh, {"config.batch_size": cfg.batch_size})
  if cfg.data.source == "corpus":
    corpus = data_lib.prepare_corpus(
      cfg.data.cache_dir
      or os.environ.get("RLHF_JAX_DATA", os.path.expanduser("~/.cache/rlhf_jax")),
      cfg.data.sources,
    )
    tokenizer = data_lib.train_tokenizer(
      corpus.texts("train"), cfg.data.vocab_size, os.path.join(workdir, "tokenizer")
    )
    ids, mask = data_lib.pack_texts(
      tokenizer, corpus.texts("train"), cfg.data.seq_len, progress=True
    )
    rows = (ids, mask, mask)  # the loss on every token
  elif cfg.data.source == "jsonl":
    if not cfg.model.path:
      raise ValueError("data.source='jsonl' needs model.path (a directory with tokenizer files)")
    tokenizer = hf.load_tokenizer(cfg.model.path)
    rows = load_sft_rows(cfg.data, tokenizer)
  else:
    raise ValueError(f"data.source={cfg.data.source!r}; expected 'corpus' or 'jsonl'")
  spec = cfg.model
  if not spec.path:
    spec = dataclasses.replace(spec, path=None, vocab_size=len(tokenizer))
  model, params = common.load_model(spec, "lm", jax.random.PRNGKey(cfg.seed), mesh)
  lora = common.lora_spec(cfg.lora)
  state, last = train_lm(
    model,
    params,
    *rows,  # ids, mask, loss_mask
    optim_spec=cfg.optimizer,
    mesh=mesh,
    workdir=workdir,
    **common.config_kwargs(cfg, "steps", "batch_size", "seed", *common.LOOP_FIELDS),
    lora=lora,
  )
  if int(state.step) == cfg.steps:  # LoRA: the merged model
    lora_lib.save_merged(
      model, state.params, params, os.path.join(workdir, "model"), tokenizer=tokenizer
    )
  return last
