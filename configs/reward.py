r"""Reward-model training on a preference file, starting from a base LM checkpoint.

The preference file is JSONL/JSON/parquet (or a Hugging Face dataset directory) with {prompt, chosen, rejected} or {prompt,
response_a, response_b, label in a/b/tie}, or the column layout of Hugging Face preference
datasets (plain text or chat messages). The model directory must hold config.json,
safetensors weights and tokenizer files (e.g. runs/sentiment/base/model from the main job,
and runs/sentiment/round_1/preferences.jsonl as data).

  python -m rlhf_jax.main --config configs/reward.py --workdir runs/rm \
      --config.model.path=runs/sentiment/base/model \
      --config.preferences=runs/sentiment/round_1/preferences.jsonl

Expect held-out accuracy (metrics.jsonl, eval_rm_accuracy) well above 0.5 on the main job's
labels; the trained model is written to WORKDIR/model in Hugging Face layout.
"""

import ml_collections as mlc

VARIANTS = (None,)  # no variants: configs/reward.py


def get_config(arg=None):
  if arg:
    raise ValueError(
      f"configs/reward.py: unknown variant {arg!r}; this config has no variants "
      "(use configs/reward.py)"
    )
  c = mlc.ConfigDict()
  c.task = "reward"
  c.distributed = dict(auto=False)
  c.model = dict(
    path="", preset="gpt2-small", vocab_size=8192, dtype="float32", remat=False, scan_unroll=0
  )  # every layer unrolled: faster on CPU than a layer scan
  c.preferences = ""
  c.heldout_fraction = 0.1
  c.prompt_len = 16
  c.response_len = 24
  c.hparams = dict(
    tie_model="rao_kupper", init_tie_param=1.5, learn_tie_param=True, center_coef=0.0
  )
  c.optimizer = dict(
    name="adamw",
    learning_rate=1e-4,
    anneal=True,
    warmup_steps=10,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    weight_decay=0.0,
    max_grad_norm=1.0,
  )
  c.mesh = dict(data=1, fsdp=-1, tensor=1)
  c.epochs = 2
  c.batch_size = 32
  c.seed = 0
  return c
