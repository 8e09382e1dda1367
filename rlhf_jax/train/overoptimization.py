"""Reward over-optimisation study (Gao, Schulman & Hilton 2022), ``task = "overoptimization"``.

Proxy reward models are trained on increasing numbers of labels (from one pool of simulated
preferences on samples of the base policy) and optimised two ways:

* best-of-n: for each evaluation prompt, n samples of the base policy, the one the proxy
  scores highest is kept; KL(best-of-n ‖ base) = log n − (n−1)/n;
* PPO with a small fixed KL coefficient, evaluated every few iterations: KL is the Monte
  Carlo estimate on the policy's own samples.

Gold (the scorer behind the simulated annotators) and proxy rewards are measured relative to
the base policy, and with d = √KL the laws ``R_bon(d) = d(α − β d)`` and
``R_rl(d) = d(α − β log d)`` are fitted by least squares. Output: ``overoptimization.md``
with α, β and R² per (labels, method) and ``overoptimization.png``.

The data and base-model stages are those of :mod:`rlhf_jax.train.pipeline` (and are reused
from the same workdir on a re-run). Across processes, as in the pipeline, process 0 alone
calls the scorers (the others receive its scores) and writes every file.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any, Dict, List, Tuple

import numpy as np

from rlhf_jax import data as data_lib
from rlhf_jax import distributed, evaluation
from rlhf_jax.feedback import scorers as scorers_lib
from rlhf_jax.feedback import simulated as simulated_lib
from rlhf_jax.train import common
from rlhf_jax.train import pipeline as pl
from rlhf_jax.train import ppo as ppo_train
from rlhf_jax.train import report as report_lib
from rlhf_jax.train import reward as reward_train

__all__ = ["Config", "check_config", "run"]


@dataclasses.dataclass(frozen=True)
class Config:
  data: pl.DataSpec = pl.DataSpec()
  base: pl.BaseSpec = pl.BaseSpec()
  feedback: pl.FeedbackSpec = pl.FeedbackSpec()
  reward: pl.RewardSpec = pl.RewardSpec()
  ppo: pl.PPOSpec = pl.PPOSpec()
  mesh: common.MeshSpec = common.MeshSpec()
  label_counts: Tuple[int, ...] = (256, 1024, 4096)
  bon_ns: Tuple[int, ...] = (1, 2, 4, 8, 16)
  ppo_eval_every: int = 4
  num_eval_prompts: int = 128
  seed: int = 0
  max_skipped_fraction: float = 0.1  # stop when more updates are skipped as non-finite


# Fields a rerun of a workdir may change (see rlhf_jax.main): caches, layout, stop criterion.
RESULT_NEUTRAL_FIELDS = ("data.cache_dir", "mesh", "max_skipped_fraction")

_BOUNDS = {
  "label_counts[*]": ">= 1",
  "bon_ns[*]": ">= 1",
  "ppo_eval_every": ">= 1",
  "num_eval_prompts": ">= 1",
  **common.SKIPPED_BOUNDS,
}


def check_config(cfg: Config) -> None:
  """The checks of the pipeline stages the study runs, and its own: label counts, best-of-n
  sizes, simulated feedback.

  Raises:
    ConfigError: one line per problem, naming the field.
  """
  from rlhf_jax import config_schema

  errors = pl.stage_errors(cfg) + config_schema.check_bounds(cfg, _BOUNDS)
  if cfg.data.kind != "corpus":
    errors.append(
      f"config.data.kind={cfg.data.kind!r}: the over-optimisation study runs on the corpus "
      "task ('corpus')"
    )
  if not cfg.label_counts:
    errors.append("config.label_counts: expected at least one label count")
  if not cfg.bon_ns:
    errors.append("config.bon_ns: expected at least one n")
  if cfg.feedback.source != "simulated":
    errors.append(
      f"config.feedback.source={cfg.feedback.source!r}: the over-optimisation "
      "study uses simulated annotators ('simulated')"
    )
  if errors:
    raise config_schema.ConfigError("\n".join(errors))


def run(cfg: Config, workdir: str) -> Dict[str, Any]:
  root = pathlib.Path(workdir)
  distributed.lead_only(lambda: root.mkdir(parents=True, exist_ok=True), "workdir")
  t_start = time.perf_counter()
  check_config(cfg)
  common.check_output_paths(
    "workdir",
    [root / "data", root / "base"],
    [root / "points.json", root / "fits.json", root / "preferences.jsonl"],
  )
  mesh = common.build_mesh(cfg.mesh)
  common.check_batch_sizes(
    mesh,
    {"config.base.batch_size": cfg.base.batch_size, "config.ppo.batch_size": cfg.ppo.batch_size},
  )
  distributed.lead_only(lambda: pl.load_scorers(cfg.feedback), "start-up: probe scorers")
  gold_scorer = pl.load_scorers(cfg.feedback, probe=False)

  def gold(prompts, responses, name: str) -> np.ndarray:  # process 0 calls, all receive
    return distributed.from_lead(
      lambda: np.asarray(gold_scorer(prompts, responses), np.float64), name
    )

  labeller = scorers_lib.get_scorer(cfg.feedback.labeller_scorer or cfg.feedback.gold_scorer)
  tokenizer = pl.prepare_data(cfg.data, root / "data", cfg.seed)
  hp = dataclasses.replace(
    cfg.ppo.hparams, eos_id=int(tokenizer.eos_token_id), pad_id=int(tokenizer.pad_token_id)
  )
  base_model, base_params = pl.base_stage(cfg, root, tokenizer, mesh)
  models = pl.Models.from_base(base_model.cfg)
  sampler = pl.Sampler(models, hp, pl.sampling_batch(cfg.ppo, hp), mesh)
  train_prompts = pl.read_prompts(root / "data", "train")
  eval_prompts = pl.read_prompts(root / "data", "eval")[: cfg.num_eval_prompts]
  p_ids, p_mask = data_lib.encode_prompts(tokenizer, train_prompts, cfg.data.prompt_len)
  e_ids, e_mask = data_lib.encode_prompts(tokenizer, eval_prompts, cfg.data.prompt_len)

  # One pool of labelled pairs from the base policy; the proxies use its prefixes.
  n_pool = min(max(cfg.label_counts), len(train_prompts))
  rows = np.random.default_rng(cfg.seed).choice(len(p_ids), n_pool, replace=False)
  ta, ma = sampler.sample(base_params, p_ids[rows], p_mask[rows], cfg.seed + 1, 1.0)
  tb, mb = sampler.sample(base_params, p_ids[rows], p_mask[rows], cfg.seed + 2, 1.0)
  prompts = [train_prompts[i] for i in rows]
  texts_a = pl.decode_responses(tokenizer, ta, ma)
  texts_b = pl.decode_responses(tokenizer, tb, mb)

  def annotate() -> list:  # process 0: label, write, and share the records
    records = simulated_lib.annotate_pairs(
      labeller,
      prompts,
      texts_a,
      texts_b,
      temperature=cfg.feedback.temperature,
      tie_threshold=cfg.feedback.tie_threshold,
      flip_prob=cfg.feedback.flip_prob,
      seed=cfg.seed,
    )
    data_lib.write_preferences_jsonl(records, root / "preferences.jsonl")
    return records

  records = distributed.from_lead(annotate, "labels: preferences.jsonl")
  pool = pl.pairs_arrays(p_ids[rows], p_mask[rows], ta, ma, tb, mb, pl.label_indices(records))

  # Base-policy samples on the evaluation prompts: n per prompt for best-of-n (sample 0 is
  # also the reference point of every curve).
  n_max = max(cfg.bon_ns)
  bon_tok, bon_mask, bon_gold = [], [], []
  for j in range(n_max):
    tok, m = sampler.sample(base_params, e_ids, e_mask, cfg.seed + 100 + j, hp.temperature)
    bon_tok.append(tok)
    bon_mask.append(m)
    text = pl.decode_responses(tokenizer, tok, m)
    bon_gold.append(gold(eval_prompts, text, f"gold: base samples {j}"))
  base_gold = float(np.mean(bon_gold[0]))

  points: List[dict] = []
  for n_labels in cfg.label_counts:
    n_labels = min(n_labels, n_pool)
    sub = {k: v[:n_labels] for k, v in pool.items()}
    rm_params, _ = reward_train.train_reward_model(
      models.scalar,
      base_params,
      sub,
      None,
      hp=cfg.reward.hparams,
      optim_spec=cfg.reward.optimizer,
      epochs=cfg.reward.epochs,
      batch_size=min(cfg.reward.batch_size, n_labels),
      mesh=mesh,
      seed=cfg.seed + n_labels,
      workdir=str(root / f"rm_{n_labels}"),
      max_skipped_fraction=cfg.max_skipped_fraction,
    )
    gain, bias = ppo_train.fit_reward_norm(
      models.lm,
      base_params,
      models.scalar,
      rm_params,
      p_ids,
      p_mask,
      hp,
      cfg.ppo.norm_samples,
      cfg.ppo.batch_size,
      mesh,
      cfg.seed,
    )
    proxy = [
      gain * sampler.scores(rm_params, *pl.join_sequences(e_ids, e_mask, t, m)) + bias
      for t, m in zip(bon_tok, bon_mask)
    ]
    base_proxy = float(np.mean(proxy[0]))
    # Best-of-n by the proxy.
    proxy_P = np.stack(proxy, 1)  # [prompts, n_max]
    gold_P = np.stack(bon_gold, 1)
    for n in cfg.bon_ns:
      pick = np.argmax(proxy_P[:, :n], axis=1)
      rows_i = np.arange(len(pick))
      points.append(
        {
          "n_labels": n_labels,
          "method": "bon",
          "n": n,
          "kl": float(evaluation.bon_kl(n)),
          "gold": float(np.mean(gold_P[rows_i, pick])) - base_gold,
          "proxy": float(np.mean(proxy_P[rows_i, pick])) - base_proxy,
        }
      )
    # PPO, evaluated every `ppo_eval_every` iterations.
    ppo_dir = root / f"ppo_{n_labels}"
    done = 0
    while done < cfg.ppo.iterations:
      state, _ = pl.train_policy(
        models,
        cfg.ppo,
        hp,
        (base_params, base_params, rm_params),
        (p_ids, p_mask),
        (gain, bias),
        mesh=mesh,
        seed=cfg.seed + n_labels,
        workdir=ppo_dir,
        stop_after=cfg.ppo_eval_every,
        desc=f"ppo ({n_labels} labels)",
        max_skipped_fraction=cfg.max_skipped_fraction,
      )
      done = int(state.step)
      policy = {k: v for k, v in state.params["policy"].items() if k != "score"}
      tok, m = sampler.sample(policy, e_ids, e_mask, cfg.seed + 7 * done, hp.temperature)
      seq = pl.join_sequences(e_ids, e_mask, tok, m)
      kl = float(
        np.mean(
          np.sum(
            (
              sampler.logprobs(policy, *seq, tok, hp.temperature)
              - sampler.logprobs(base_params, *seq, tok, hp.temperature)
            )
            * m,
            1,
          )
        )
      )
      text = pl.decode_responses(tokenizer, tok, m)
      g = float(np.mean(gold(eval_prompts, text, f"gold: ppo {n_labels} labels, it {done}")))
      g -= base_gold
      pr = float(np.mean(gain * sampler.scores(rm_params, *seq) + bias)) - base_proxy
      points.append(
        {
          "n_labels": n_labels,
          "method": "ppo",
          "iteration": done,
          "kl": max(kl, 0.0),
          "gold": g,
          "proxy": pr,
        }
      )
  fits = {}
  for n_labels, method in sorted({(p["n_labels"], p["method"]) for p in points}):
    # All points, d = 0 included (the laws pass through it), as overoptimization.md fits them.
    pts = [p for p in points if p["n_labels"] == n_labels and p["method"] == method]
    d = np.sqrt([p["kl"] for p in pts])
    fit = evaluation.fit_bon if method == "bon" else evaluation.fit_rl
    try:
      f = fit(d, [p["gold"] for p in pts])
      fits[f"{method}_{n_labels}"] = {"alpha": f.alpha, "beta": f.beta, "r2": f.r2}
    except ValueError as e:
      fits[f"{method}_{n_labels}"] = {"error": str(e)}

  def write() -> str:  # process 0
    data_lib.atomic_write_json(root / "points.json", points)
    path = report_lib.write_overoptimization_report(str(root), points)
    data_lib.atomic_write_json(root / "fits.json", fits)
    return path

  path = distributed.from_lead(write, "points, fits and report")
  return {"report": path, "fits": json.dumps(fits), "seconds": time.perf_counter() - t_start}
