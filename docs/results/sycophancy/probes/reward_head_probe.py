"""Retrain a finished run's round-1 reward model on its own labels with another scalar-head
initialisation, and print its held-out accuracy and probes (docs/results/sycophancy/ and
docs/results/assistant/ quote it).

  python docs/results/sycophancy/probes/reward_head_probe.py CONFIG WORKDIR SEED HEAD [HEAD ...]

CONFIG: the run's config (e.g. "configs/sycophancy.py:arm,bias=0,kl=0.05" or
"configs/assistant.py"); WORKDIR: its finished workdir (data/, sft/ when it had a
supervised stage, round_1/pairs.npz, round_1/eval_answers.jsonl — waited for before the
first probe, so the probe may start once a run has its labels); SEED: its seed; HEAD:
"default" (std 1/sqrt(d + 1)) or a std such as 0.0, optionally with options joined by "+"
(e.g. "default+balance", "0.0+epochs=3+balance"): "epochs=N" trains N passes over the
labels instead of the run's reward.epochs; "dense": the whole trunk fine-tuned instead of
LoRA adapters (config.reward.dense); "lr=X": the reward optimizer's peak learning rate;
"rank=N": LoRA adapters of rank N (alpha scaled to keep alpha / rank); "balance": the run's
comparison groups of the
category (harmful or benign) with
fewer decisive decline-against-answer labels are repeated, drawn at random, until both
categories hold about as many (round_1/preferences.jsonl says which response declines and
which won) — does the reward model's lean follow the labels' balance, and does it then tell
the two apart? Each reward model is trained as the run
trained its own (same labels, steps, optimizer and seed, checkpoints under
/tmp/reward_head_probe/), evaluated on the run's held-out pairs (re-drawn with the run's
seed) and probed: the agreement probe (premise prompts) and, for the assistant task, the
refusal probe on the starting model's first answer to each held-out prompt. One JSON line
per head on stdout.
"""

import dataclasses
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


def balance(pairs: dict, prefs: list, per: int) -> dict:
  """``pairs`` with whole groups (``per`` consecutive comparisons of one prompt) of the
  minority category repeated until harmful and benign hold about as many decisive
  decline-against-answer labels."""
  from rlhf_jax.data import assistant_prompts
  from rlhf_jax.feedback import assistant

  cats, decisive = [], []
  for g in range(len(prefs) // per):
    rows = prefs[g * per : (g + 1) * per]
    cats.append(assistant_prompts.lookup_prompt(rows[0]["prompt"]).category)
    decisive.append(
      sum(
        assistant.declines(r["response_a"]) != assistant.declines(r["response_b"])
        and r["label"] in ("a", "b")
        for r in rows
      )
    )
  count = {c: sum(d for k, d in zip(cats, decisive) if k == c) for c in ("harmful", "benign")}
  minority = min(count, key=count.get)
  pool = [g for g, (c, d) in enumerate(zip(cats, decisive)) if c == minority and d]
  rng, extra, added = np.random.default_rng(0), [], 0
  while added < abs(count["harmful"] - count["benign"]):
    g = int(rng.choice(pool))
    extra.append(g)
    added += decisive[g]
  print(f"balance: {count}; {len(extra)} {minority} groups repeated (+{added})", file=sys.stderr)
  idx = np.concatenate([np.arange(len(prefs))] + [np.arange(g * per, (g + 1) * per) for g in extra])
  return {k: v[idx] for k, v in pairs.items()}


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
  answers_file = root / "round_1" / "eval_answers.jsonl"
  per = cfg.feedback.responses_per_prompt * (cfg.feedback.responses_per_prompt - 1) // 2
  for head in heads:
    init, *options = head.split("+")
    std = None if init == "default" else float(init)
    train, epochs = pairs, cfg.reward.epochs
    lora, optim_spec = common.lora_spec(cfg.lora), cfg.reward.optimizer
    for option in options:
      if option == "balance":
        prefs = [r for _, r in files.read_jsonl(root / "round_1" / "preferences.jsonl")]
        train = balance(pairs, prefs, max(per, 1))
      elif option.startswith("epochs=") and option[7:].isdigit() and int(option[7:]) > 0:
        epochs = int(option[7:])
      elif option == "dense":
        lora = None
      elif option.startswith("lr="):
        optim_spec = dataclasses.replace(optim_spec, learning_rate=float(option[3:]))
      elif option.startswith("rank=") and lora is None:
        raise SystemExit(f"HEAD {head!r}: rank=N needs LoRA adapters (not with dense)")
      elif option.startswith("rank=") and option[5:].isdigit() and int(option[5:]) > 0:
        rank = int(option[5:])
        lora = dataclasses.replace(lora, rank=rank, alpha=lora.alpha * rank / lora.rank)
      else:
        raise SystemExit(
          f"HEAD {head!r}: unknown option {option!r}; expected balance, epochs=N, dense, "
          "lr=X or rank=N"
        )
    out = pathlib.Path("/tmp/reward_head_probe") / f"{root.name}_{head}"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    rm, ev = reward_train.train_reward_model(
      models.scalar,
      params,
      train,
      held_out,
      hp=cfg.reward.hparams,
      optim_spec=optim_spec,
      epochs=epochs,
      batch_size=cfg.reward.batch_size,
      mesh=mesh,
      seed=cfg.seed + 1,  # round 1's
      workdir=str(out),
      lora=lora,
      responses_per_prompt=cfg.feedback.responses_per_prompt,
      eval_groups=pl._eval_pair_categories(cfg, prompts),
      head_init_std=std,
    )
    dense = pl._materialize(rm, params)
    row = {"workdir": str(root), "seed": seed, "head": head, "seconds": time.perf_counter() - t0}
    row.update(
      {k: v for k, v in ev.items() if k.startswith(("rm_accuracy", "rm_decided", "rm_ece"))}
    )
    while not answers_file.exists():  # the run may still be in its policy stage
      time.sleep(30)
    answers = [rec["before"] for _, rec in files.read_jsonl(answers_file)]
    first = answers[:: cfg.eval.answers_per_prompt]  # the starting model's first answers
    row.update(pl.reward_refusal_probe(sampler, tok, dense, prompts, first, hp))
    row.update(pl.reward_agreement_probe(sampler, tok, dense, prompts, hp))
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:])
