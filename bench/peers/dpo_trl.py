"""DPO training throughput of TRL 1.16 ``DPOTrainer`` (pairs/s): the peer of ``bench/dpo.py``.

Runs in the torch + TRL environment of ``../shared/anchors/README.md`` (``$VENVS/torch``) and
uses the anchors' helpers (``hf_common``: GPT-2 shapes, the word-level tokenizer whose text
"t5 t17" is exactly the ids [5, 17]; ``benchutil``: timing and the RESULT line). Torch is
used here only as the peer being measured; nothing in the library imports this file.

  $VENVS/torch/bin/python bench/peers/dpo_trl.py                     # small, precomputed ref
  $VENVS/torch/bin/python bench/peers/dpo_trl.py --ref live          # reference forward per step

Settings: GPT2LMHeadModel (random init, seed 0) as the policy and, with ``--ref live``, a
second copy as the reference; pairs of a 32-token random prompt and two 32-token random
responses (31 random words, then the EOS that TRL appends), per_device_train_batch_size=32
pairs (= 64 sequences of 64 tokens per step), sigmoid loss, beta 0.1, AdamW lr 1e-5, fp32
(bf16=False), gradient_checkpointing=False, dropout disabled, use_cpu. ``--ref precompute``
(default) sets ``precompute_ref_log_probs=True``: the reference log-probs of every pair are
computed once in the trainer's constructor (timed on its own as ``ref_precompute_s``) and
each step runs the policy only. Steps 1..--warmup are warm-up; pairs/s = batch / (seconds
between consecutive ``on_step_end`` callbacks).
"""

import argparse
import os
import sys
import tempfile
import time

ANCHORS = os.environ.get(
  "RLHF_JAX_ANCHORS",
  os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "anchors"),
)
sys.path.insert(0, ANCHORS)
# benchutil appends each record under $BENCH_RESULTS_DIR (else the anchors' own results/).
os.environ.setdefault(
  "BENCH_RESULTS_DIR", os.path.join(tempfile.gettempdir(), "rlhf_jax_peer_results")
)
import hf_common  # noqa: E402
from benchutil import emit, env_info, summarize  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--size", default="small", choices=list(hf_common.SIZES))
ap.add_argument("--batch", type=int, default=32, help="pairs per step")
ap.add_argument("--prompt-len", type=int, default=32)
ap.add_argument("--response-len", type=int, default=32, help="incl. the EOS TRL appends")
ap.add_argument("--steps", type=int, default=12, help="timed steps")
ap.add_argument("--warmup", type=int, default=2)
ap.add_argument("--beta", type=float, default=0.1)
ap.add_argument("--ref", default="precompute", choices=["precompute", "live"])
ap.add_argument("--threads", type=int, default=2)
args = ap.parse_args()

import numpy as np  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

threads = hf_common.set_threads(args.threads)
tok = hf_common.tokenizer(padding_side="right")
model = hf_common.causal_lm(args.size, seed=0)
ref_model = hf_common.causal_lm(args.size, seed=0) if args.ref == "live" else None
n_steps = args.steps + args.warmup
rng = np.random.default_rng(0)
n = args.batch * n_steps
ds = Dataset.from_dict(
  {
    "prompt": [hf_common.random_text(rng, args.prompt_len) for _ in range(n)],
    # a leading space so that prompt + completion splits into words at the boundary
    "chosen": [" " + hf_common.random_text(rng, args.response_len - 1) for _ in range(n)],
    "rejected": [" " + hf_common.random_text(rng, args.response_len - 1) for _ in range(n)],
  }
)

# Time the reference pass on its own (it runs inside the trainer's constructor).
PRE = []
_orig = DPOTrainer._precompute_ref_logps


def _timed_precompute(self, *a, **k):
  t0 = time.perf_counter()
  out = _orig(self, *a, **k)
  PRE.append(time.perf_counter() - t0)
  return out


DPOTrainer._precompute_ref_logps = _timed_precompute


class Clock(TrainerCallback):
  def __init__(self):
    self.marks = []

  def on_train_begin(self, *a, **k):
    self.marks.append(time.perf_counter())

  def on_step_end(self, *a, **k):
    self.marks.append(time.perf_counter())


clock = Clock()
cfg = DPOConfig(
  output_dir=tempfile.mkdtemp(prefix="dpo_bench_"),
  report_to="none",
  use_cpu=True,
  seed=0,
  learning_rate=1e-5,
  per_device_train_batch_size=args.batch,
  gradient_accumulation_steps=1,
  max_steps=n_steps,
  max_length=args.prompt_len + args.response_len,
  beta=args.beta,
  loss_type=["sigmoid"],
  precompute_ref_log_probs=args.ref == "precompute",
  bf16=False,
  gradient_checkpointing=False,
  disable_dropout=True,
  logging_steps=1000,
  save_strategy="no",
  disable_tqdm=True,
  dataloader_num_workers=0,
)
t0 = time.perf_counter()
trainer = DPOTrainer(
  model=model,
  ref_model=ref_model,
  args=cfg,
  train_dataset=ds,
  processing_class=tok,
  callbacks=[clock],
)
init_s = time.perf_counter() - t0
ex = trainer.train_dataset[0]
lens = (len(ex["prompt_ids"]), len(ex["chosen_ids"]), len(ex["rejected_ids"]))
assert lens == (args.prompt_len, args.response_len, args.response_len), lens
assert (args.ref == "precompute") == ("ref_chosen_logps" in trainer.train_dataset.column_names)
trainer.train()
steps = [b - a for a, b in zip(clock.marks[:-1], clock.marks[1:])]
assert len(steps) == n_steps, (len(steps), n_steps)
r = summarize(steps[args.warmup :])
emit(
  "dpo_trl116",
  dict(
    size=args.size,
    ref=args.ref,
    n_params=sum(p.numel() for p in model.parameters()),
    pairs_per_step=args.batch,
    prompt_len=args.prompt_len,
    response_len=args.response_len,
    beta=args.beta,
    threads=threads,
    s_per_step=r,
    pairs_per_s_best=args.batch / r["min"],
    pairs_per_s_median=args.batch / r["median"],
    train_pairs=n,
    ref_precompute_s=PRE[0] if PRE else None,
    trainer_init_s=init_s,
    versions=hf_common.versions(),
    info=env_info(),
    loadavg=os.getloadavg(),
  ),
)
