"""Retrain a finished run's round-1 reward model on its own labels with another scalar-head
initialisation, and print its held-out accuracy and probes (docs/results/sycophancy/ and
docs/results/assistant/ quote it).

  python docs/results/sycophancy/probes/reward_head_probe.py CONFIG WORKDIR SEED HEAD [HEAD ...]

CONFIG: the run's config (e.g. "configs/sycophancy.py:arm,bias=0,kl=0.05" or
"configs/assistant.py"); WORKDIR: its finished workdir (data/, sft/ when it had a
supervised stage, round_1/pairs.npz, round_1/eval_answers.jsonl); SEED: its seed; HEAD:
"default" (std 1/sqrt(d + 1)) or a std such as 0.0. Each reward model is trained as the run
trained its own (same labels, steps, optimizer and seed, checkpoints under
/tmp/reward_head_probe/), evaluated on the run's held-out pairs (re-drawn with the run's
seed) and probed: the agreement probe (premise prompts) and, for the assistant task, the
refusal probe on the starting model's first answer to each held-out prompt. One JSON line
per head on stdout.
"""

import json
import pathlib
import shutil
import sys
import time

import numpy as np

from rlhf_jax import main as entry
from rlhf_jax.data import files
from rlhf_jax.train import common
from rlhf_jax.train import pipeline as pl
from rlhf_jax.train import reward as reward_train


def main(spec: str, workdir: str, seed: int, heads: list) -> None:
  raw = entry.load_config_file(spec)
  raw.seed = seed
  _, cfg = entry.validate(raw)
  root = pathlib.Path(workdir)
  mesh, gold, _ = pl._start_up_checks(cfg, root)
  tok = pl.prepare_data(cfg.data, root / "data", cfg.seed, cfg.base.path)
  hp = pl.policy_hparams(cfg.ppo, tok)
  base_model, params = pl.base_stage(cfg, root, tok, mesh)
  models = pl.Models.from_base(base_model.cfg)
  prompts = pl.load_prompts(root / "data", tok, cfg.data.prompt_len)
  sampler = pl.Sampler(models, hp, pl.sampling_batch(cfg.ppo, hp), mesh)
  if cfg.sft.steps:  # the finished supervised model: the reward model's trunk
    params = pl.demonstration_stage(cfg, root, tok, sampler, models, params, prompts, hp, mesh)
  held_out = pl.held_out_reward_pairs(cfg, sampler, tok, params, prompts, gold)
  pairs = dict(np.load(root / "round_1" / "pairs.npz"))
  answers = [rec["before"] for _, rec in files.read_jsonl(root / "round_1" / "eval_answers.jsonl")]
  first = answers[:: cfg.eval.answers_per_prompt]  # the starting model's first answers
  for head in heads:
    std = None if head == "default" else float(head)
    out = pathlib.Path("/tmp/reward_head_probe") / f"{root.name}_{head}"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    rm, ev = reward_train.train_reward_model(
      models.scalar,
      params,
      pairs,
      held_out,
      hp=cfg.reward.hparams,
      optim_spec=cfg.reward.optimizer,
      epochs=cfg.reward.epochs,
      batch_size=cfg.reward.batch_size,
      mesh=mesh,
      seed=cfg.seed + 1,  # round 1's
      workdir=str(out),
      lora=common.lora_spec(cfg.lora),
      responses_per_prompt=cfg.feedback.responses_per_prompt,
      eval_groups=pl._eval_pair_categories(cfg, prompts),
      head_init_std=std,
    )
    dense = pl._materialize(rm, params)
    row = {"workdir": str(root), "seed": seed, "head": head, "seconds": time.perf_counter() - t0}
    row.update(
      {k: v for k, v in ev.items() if k.startswith(("rm_accuracy", "rm_decided", "rm_ece"))}
    )
    row.update(pl.reward_refusal_probe(sampler, tok, dense, prompts, first, hp))
    row.update(pl.reward_agreement_probe(sampler, tok, dense, prompts, hp))
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:])
