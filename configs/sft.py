r"""Causal-LM pretraining on the built-in English corpus, or SFT on a JSONL file.

Pretraining (default): fetches the corpus through the package managers, trains a byte-level
BPE tokenizer and a GPT-2-style model; held-out loss falls from ~9.0 (log 8192) to about 4
within 1000 steps of 32 x 64 tokens.

  python -m rlhf_jax.main --config configs/sft.py --workdir runs/sft

SFT on {"prompt": ..., "response": ...} records (loss on response tokens only), from a
checkpoint directory with tokenizer files:

  python -m rlhf_jax.main --config configs/sft.py:jsonl --workdir runs/sft2 \
      --config.model.path=runs/sft/model --config.data.path=pairs.jsonl
"""

import ml_collections as mlc

from rlhf_jax.config_schema import config_module

common = config_module(__file__, "common")

VARIANTS = ("corpus", "jsonl")  # configs/sft.py:<data source>


def get_config(arg=None):
  source = arg or "corpus"
  if source not in VARIANTS:
    raise ValueError(f"configs/sft.py: unknown variant {source!r}; use 'corpus' or 'jsonl'")
  c = mlc.ConfigDict()
  c.task = "sft"  # the trainer (rlhf_jax.train.sft)
  c.distributed = common.distributed()  # multi-process start-up
  c.model = common.model()  # a preset at random init, or model.path to fine-tune
  c.data = dict(
    source=source,  # "corpus" (pretraining) | "jsonl" (records of model.path's tokenizer)
    path="",  # "jsonl": the file
    cache_dir="",  # corpus downloads; "" -> $RLHF_JAX_DATA or ~/.cache/rlhf_jax
    sources=("fortunes", "bible", "austen", "shakespeare"),  # corpus parts
    vocab_size=8192,  # BPE tokenizer trained on the corpus
    seq_len=64,  # tokens per row
  )
  c.optimizer = common.optimizer("adamw", 1e-3, warmup_steps=50, weight_decay=0.01)
  c.mesh = common.mesh()  # device layout only
  c.lora = common.lora()  # adapters on model.path's weights (frozen) instead of dense fine-tuning
  c.steps = 1000  # optimizer steps
  c.batch_size = 32  # rows per step
  c.seed = 0  # initialisation and batches
  c.log_every = 50  # steps between metric records
  c.checkpoint_every = 500  # steps between checkpoints
  c.keep_checkpoints = 2  # checkpoints kept
  if source == "jsonl":  # fine-tuning: a lower rate, fewer steps
    c.optimizer.learning_rate = 1e-4
    c.steps = 200
  return c
