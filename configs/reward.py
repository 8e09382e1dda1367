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

from rlhf_jax.config_schema import config_module

common = config_module(__file__, "common")

VARIANTS = (None,)  # no variants: configs/reward.py


def get_config(arg=None):
  if arg:
    raise ValueError(
      f"configs/reward.py: unknown variant {arg!r}; this config has no variants "
      "(use configs/reward.py)"
    )
  c = mlc.ConfigDict()
  c.task = "reward"  # the trainer (rlhf_jax.train.reward)
  c.distributed = common.distributed()  # multi-process start-up
  c.model = common.model()  # model.path: the base LM (and tokenizer) to start from
  c.preferences = ""  # preference file (.jsonl, .json, .parquet) or dataset directory
  c.heldout_fraction = 0.1  # records held out for the evaluation
  c.prompt_len = 16  # prompt tokens (left-padded)
  c.response_len = 24  # response tokens (right-padded, EOS appended)
  c.hparams = common.reward_hparams()  # loss and tie model
  c.optimizer = common.optimizer("adamw", 1e-4, warmup_steps=10)  # reward-model optimizer
  c.mesh = common.mesh()  # device layout only
  c.epochs = 2  # passes over the training pairs
  c.batch_size = 32  # pairs per step
  c.seed = 0  # initialisation, split and order
  c.lora = common.lora()  # adapters + a new scalar head on the frozen base
  return c
