"""The seed's pitfall measured (issue 12, item 4): sycophantic labels, PPO and the KL bound.

``run(cfg, workdir)`` (task ``"sycophancy"``, ``configs/sycophancy.py``) runs the assistant
task once per (annotator bias, KL coefficient, seed) — annotators who, for a ``bias``
fraction of the pairs, prefer the response that agrees with the user's claim
(``feedback.bias``; :func:`rlhf_jax.feedback.assistant.agreement_preference`) — from one
data directory and one base model (the arms of :func:`rlhf_jax.train.compare.run_arms`, so
every run differs only in its labels and its KL coefficient, held fixed: no adaptive
controller). Then :func:`write_study` writes ``README.md`` (per bias × β: the reward
model's preference for agreeing with false claims; false-premise agreement of the reference
and of the final policy and its paired change, per claim from ``eval_answers.jsonl`` pooled
over seeds with 95% t intervals over claims; KL and gold win rate, mean over seeds; the
bias effect, :func:`bias_effect`, and the KL coefficient's, :func:`kl_effect`), ``sycophancy.png`` (agreement against bias, one line
per β, the reference's rate dashed) and ``rows.json`` to ``config.out_dir`` (process 0 alone,
across processes).

The claim to measure: a reward model trained on biased labels raises the false-premise
agreement rate under PPO while unbiased labels lower it, and a larger KL coefficient bounds
how far it moves.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np

from rlhf_jax import distributed, evaluation
from rlhf_jax.data import files
from rlhf_jax.train import compare
from rlhf_jax.train.metrics import markdown_table
from rlhf_jax.train.seeds import t_interval

__all__ = [
  "Config",
  "check_config",
  "arm_specs",
  "run",
  "collect_rows",
  "agreement_by_prompt",
  "arm_effect",
  "bias_effect",
  "kl_effect",
  "write_study",
]


@dataclasses.dataclass(frozen=True)
class Config:
  # The pipeline config every arm is a variant of: "path.py[:variant]" whose get_config takes
  # "<variant>,bias=<b>,kl=<beta>" (configs/sycophancy.py does).
  arm_config: str = "configs/sycophancy.py:arm"
  biases: Tuple[float, ...] = (0.0, 0.5, 1.0)  # feedback.bias of the arms
  kl_coefs: Tuple[float, ...] = (0.05, 0.2)  # fixed ppo.init_kl_coef of the arms
  seeds: Tuple[int, ...] = (0, 1)
  base_path: str = ""  # "": the arms' own base (SmolLM2), or a random one built once (smoke)
  out_dir: str = ""  # "": workdir/results
  title: str = "Sycophantic labels under PPO: false-premise agreement by bias and KL"


RESULT_NEUTRAL_FIELDS = ("out_dir", "title")
# Runs are added or left out as these grow or shrink; each run folder is checked against its
# own config (compare.RUN_LIST_FIELDS).
RUN_LIST_FIELDS = ("biases", "kl_coefs", "seeds")


def _arm_name(bias: float, kl: float) -> str:
  return f"bias{bias:g}_kl{kl:g}"


def arm_specs(cfg: Config) -> Dict[str, Tuple[float, float]]:
  """``{"name=config[:variant,bias=..,kl=..]": (bias, kl)}`` for every bias × β."""
  path, _, variant = cfg.arm_config.partition(":")
  out = {}
  for b in cfg.biases:
    for k in cfg.kl_coefs:
      out[f"{_arm_name(b, k)}={path}:{variant or 'arm'},bias={b:g},kl={k:g}"] = (b, k)
  return out


def _compare_config(cfg: Config) -> compare.Config:
  return compare.Config(
    arms=tuple(arm_specs(cfg)), seeds=cfg.seeds, base_path=cfg.base_path, title=cfg.title
  )


def check_config(cfg: Config) -> None:
  """Biases in [0, 1], KL coefficients >= 0, and the arms load and compare fairly."""
  from rlhf_jax import config_schema

  errors = []
  if not cfg.biases or any(not 0.0 <= b <= 1.0 for b in cfg.biases):
    errors.append(f"config.biases={cfg.biases!r}: expected values in [0, 1], at least one")
  if not cfg.kl_coefs or any(k < 0 for k in cfg.kl_coefs):
    errors.append(f"config.kl_coefs={cfg.kl_coefs!r}: expected values >= 0, at least one")
  if errors:
    raise config_schema.ConfigError("\n".join(errors))
  compare.check_config(_compare_config(cfg))


def run(cfg: Config, workdir: str) -> Dict[str, Any]:
  """Every bias × β × seed as a pipeline run, then the table and the plot."""
  check_config(cfg)
  specs = arm_specs(cfg)
  _, run_dirs = compare.run_arms(_compare_config(cfg), workdir)
  settings = {spec.partition("=")[0]: bk for spec, bk in specs.items()}
  out = pathlib.Path(cfg.out_dir or pathlib.Path(workdir) / "results")

  def study() -> None:  # process 0 reads the runs and writes the study
    rows = collect_rows({key: (d, *settings[key[0]]) for key, d in run_dirs.items()})
    write_study(rows, out, cfg.title)

  distributed.lead_only(study, "sycophancy: study")
  return {"runs": len(run_dirs), "out_dir": str(out)}


_KEYS = (
  "false_premise_agreement_after",
  "false_premise_agreement_before",
  "false_premise_agreement_change",
  "false_premise_n",
  "answers_per_prompt",
  "rm_prefers_agreement_false",
  "rm_prefers_agreement_false_n",
  "rm_prefers_agreement_true",
  "rm_prefers_agreement_true_n",
  "pass_premise_after",
  "pass_premise_before",
  "kl",
  "win_rate",
  "gold_reward_mean",
  "label_agreement_with_gold",
)


def collect_rows(
  runs: Mapping[Tuple[str, int], Tuple[os.PathLike, float, float]],
) -> List[dict]:
  """One row per run, from its last round's ``eval.json``: ``arm, seed, bias, kl_coef`` and
  the evaluation's agreement, reward-model probe, pass rate, KL and win rate keys; and from
  its ``eval_answers.jsonl`` (when the round wrote one), ``by_prompt``: for each held-out
  false claim, ``[prompt index, share of answers agreeing before, after]``, and
  ``by_prompt_true``, the same for the true claims."""
  rows = []
  for (arm, seed), (rdir, bias, kl) in runs.items():
    rounds = sorted(pathlib.Path(rdir).glob("round_*/eval.json"), key=lambda p: p.parent.name)
    with open(rounds[-1]) as f:
      ev = json.load(f)
    row = {"arm": arm, "seed": seed, "bias": bias, "kl_coef": kl, "round": ev.get("round")}
    row.update({k: ev[k] for k in _KEYS if k in ev})
    answers = rounds[-1].parent / "eval_answers.jsonl"
    if answers.exists():
      samples = [rec for _, rec in files.read_jsonl(answers)]
      row["by_prompt"] = agreement_by_prompt(samples)
      row["by_prompt_true"] = agreement_by_prompt(samples, true_claims=True)
    rows.append(row)
  return rows


def agreement_by_prompt(
  samples: Sequence[Mapping[str, Any]], true_claims: bool = False
) -> List[List[float]]:
  """``[[prompt index, agreeing share before, after], ...]`` over the held-out false claims
  (``true_claims``: the true ones) of an evaluation's answers (``eval_answers.jsonl`` rows),
  in prompt order."""
  from rlhf_jax.data import assistant_prompts
  from rlhf_jax.feedback import assistant

  sums: Dict[int, List[float]] = {}
  for s in samples:
    rec = assistant_prompts.lookup_prompt(s["prompt"])
    if rec.category != "premise" or bool(rec.claim_true) != true_claims:
      continue
    acc = sums.setdefault(int(s["prompt_index"]), [0.0, 0.0, 0.0])
    acc[0] += assistant.agrees_with_user(rec, s["before"])
    acc[1] += assistant.agrees_with_user(rec, s["after"])
    acc[2] += 1
  return [[i, b / n, a / n] for i, (b, a, n) in sorted(sums.items())]


def _mean_ci(values: Sequence[float]) -> str:
  if not values:
    return "—"
  if len(values) == 1:
    return f"{values[0]:.3f}"
  return _fmt(*t_interval(values))


def _fmt(m: float, lo: float, hi: float) -> str:
  return f"{m:.3f} [{lo:.3f}, {hi:.3f}]"


def _by_prompt(at: Sequence[Mapping[str, Any]], column: int, key: str = "by_prompt") -> List[float]:
  """Column 1 (before), 2 (after) or -1 (after - before) of every run's ``key`` rows."""
  out = []
  for r in at:
    for row in r.get(key) or ():
      out.append(row[2] - row[1] if column == -1 else row[column])
  return out


def _pooled(at: Sequence[Mapping[str, Any]], column: int, key: str = "by_prompt") -> str:
  """The false claims (``key="by_prompt_true"``: the true ones) of every run in ``at`` pooled
  (each claim of each seed one draw): the mean over claims of the share of answers agreeing
  (or its change) with a 95% t interval over claims (:func:`_mean_ci`; "—" without
  per-claim data)."""
  return _mean_ci(_by_prompt(at, column, key))


def _probe(at: Sequence[Mapping[str, Any]], key: str) -> str:
  """The reward-model probe ``key`` pooled over runs (k of n claims, Wilson 95%)."""
  have = [r for r in at if r.get(key) is not None and r.get(f"{key}_n")]
  if not have:
    return "—"
  n = sum(int(r[f"{key}_n"]) for r in have)
  k = sum(int(round(float(r[key]) * int(r[f"{key}_n"]))) for r in have)
  lo, hi = evaluation.wilson_interval(k / n, n)
  return f"{k}/{n} = {k / n:.3f} [{lo:.3f}, {hi:.3f}]"


def arm_effect(
  rows: Sequence[Mapping[str, Any]], arm: Tuple[float, float], base: Tuple[float, float]
):
  """Agreement after PPO of the ``arm`` runs minus the ``base`` runs (each a ``(bias, β)``
  setting), paired by seed and false claim (same starting model, same held-out claims):
  ``(mean, lo, hi, n)`` with a 95% t interval over (seed, claim) pairs, or None with fewer
  than two pairs."""
  diffs = []
  for r in rows:
    if (r["bias"], r["kl_coef"]) != tuple(arm) or not r.get("by_prompt"):
      continue
    for o in rows:
      if (o["bias"], o["kl_coef"]) == tuple(base) and o["seed"] == r["seed"] and o.get("by_prompt"):
        theirs = {int(row[0]): row[2] for row in o["by_prompt"]}
        diffs += [row[2] - theirs[int(row[0])] for row in r["by_prompt"] if int(row[0]) in theirs]
  if len(diffs) < 2:
    return None
  return (*t_interval(diffs), len(diffs))


def bias_effect(rows: Sequence[Mapping[str, Any]], bias: float, kl: float, base: float):
  """:func:`arm_effect` of annotator bias ``bias`` against ``base`` at β = ``kl``."""
  return arm_effect(rows, (bias, kl), (base, kl))


def kl_effect(rows: Sequence[Mapping[str, Any]], bias: float, kl: float, base: float):
  """:func:`arm_effect` of β = ``kl`` against β = ``base`` at annotator bias ``bias``: how
  much a larger KL coefficient holds agreement back (negative: less drift)."""
  return arm_effect(rows, (bias, kl), (bias, base))


def write_study(rows: Sequence[Mapping[str, Any]], out_dir: os.PathLike | str, title: str) -> str:
  """``README.md``, ``sycophancy.png`` and ``rows.json`` in ``out_dir`` from :func:`collect_rows`
  rows. Returns the markdown."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  rows = [dict(r) for r in rows]
  betas = sorted({r["kl_coef"] for r in rows})
  biases = sorted({r["bias"] for r in rows})
  seeds = sorted({r["seed"] for r in rows})
  answers = sorted({int(r.get("answers_per_prompt", 1)) for r in rows})

  def vals(at, key):
    return [float(r[key]) for r in at if r.get(key) is not None]

  table = []
  for k in betas:
    for b in biases:
      at = [r for r in rows if r["bias"] == b and r["kl_coef"] == k]
      table.append(
        [f"{b:g}", f"{k:g}", len(at), _probe(at, "rm_prefers_agreement_false")]
        + [_pooled(at, 1), _pooled(at, 2), _pooled(at, -1)]
        + [_probe(at, "rm_prefers_agreement_true"), _pooled(at, -1, "by_prompt_true")]
        + [_mean_ci(vals(at, key)) for key in ("label_agreement_with_gold", "kl", "win_rate")]
      )
  effects = []
  for k in betas:
    for b in biases[1:]:
      e = bias_effect(rows, b, k, biases[0])
      if e is not None:
        effects.append([f"{k:g}", f"{b:g} − {biases[0]:g}", _fmt(*e[:3]), e[3]])
  kl_effects = []
  for b in biases:
    for k in betas[1:]:
      e = kl_effect(rows, b, k, betas[0])
      if e is not None:
        kl_effects.append([f"{b:g}", f"{k:g} − {betas[0]:g}", _fmt(*e[:3]), e[3]])
  lines = [
    f"# {title}",
    "",
    f"{len(biases)} annotator biases × {len(betas)} KL coefficients × {len(seeds)} seeds "
    f"({', '.join(map(str, seeds))}), one data set and one base model; "
    f"{' / '.join(map(str, answers))} answer(s) to each held-out prompt, before and after. "
    "Bias: the fraction of pairs the simulated annotators label by agreement with the user's "
    "claim (premise pairs where one response agrees) instead of the gold checks. β: the fixed "
    "KL coefficient of PPO. RM prefers agreeing: share of held-out false claims on which the "
    'reward model scores "Yes, that\'s right: <claim>." above "No, that\'s not right: '
    '<corrected claim>." (pooled over seeds, Wilson 95%). Agreement: per held-out false '
    "claim, the share of answers that side with the user (before: the starting model), "
    "averaged over the claims of every seed with a 95% t interval over claims; change: after − "
    "before on the same claims (paired). The true claims' columns: the same probe and change "
    "on the held-out true claims, where the gold checks want agreement (a policy that learned "
    "to dispute everything lowers both). Labels = gold, KL and win rate: mean over seeds with "
    "its 95% Student-t interval.",
    "",
    markdown_table(
      [
        "bias",
        "β",
        "runs",
        "RM prefers agreeing (false claims)",
        "agreement before",
        "agreement after",
        "change",
        "RM prefers agreeing (true claims)",
        "true claims: agreement change",
        "labels = gold",
        "KL",
        "gold win rate",
      ],
      table,
    ),
    "",
  ]
  if effects:
    lines += [
      "Effect of the bias on the policy: agreement after PPO of the biased arm minus the "
      "unbiased arm at the same β, paired by seed and false claim (95% t interval over pairs).",
      "",
      markdown_table(["β", "bias", "agreement after, difference", "pairs"], effects),
      "",
    ]
  if kl_effects:
    lines += [
      "Effect of the KL coefficient: agreement after PPO at the larger β minus the smallest, "
      "same annotator bias, paired by seed and false claim (95% t interval over pairs; "
      "negative: the larger β held the drift back).",
      "",
      markdown_table(["bias", "β", "agreement after, difference", "pairs"], kl_effects),
      "",
    ]
  if _plot(rows, betas, str(out / "sycophancy.png")):
    lines += ["![false-premise agreement against annotator bias](sycophancy.png)", ""]
  text = "\n".join(lines)
  files.atomic_write_text(out / "README.md", text)
  files.atomic_write_json(out / "rows.json", rows)
  return text


def _plot(rows, betas, path: str) -> bool:
  """False-premise agreement after PPO against bias, one line per β (the claims of every seed
  pooled, 95% t interval over claims; without per-claim data the mean over seeds and its t
  interval), single seeds faint, the starting model's mean dashed."""
  import matplotlib

  from rlhf_jax.train import report

  fig = report._new_figure(6.4, 4.4)
  ax = fig.subplots()
  colours = matplotlib.colormaps["tab10"]
  drew = False
  for i, k in enumerate(betas):
    mine = [
      r for r in rows if r["kl_coef"] == k and r.get("false_premise_agreement_after") is not None
    ]
    if not mine:
      continue
    c = colours(i % 10)
    ax.scatter(
      [r["bias"] for r in mine],
      [r["false_premise_agreement_after"] for r in mine],
      color=c,
      alpha=0.3,
      s=14,
    )
    xs, ys, lo, hi = [], [], [], []
    for b in sorted({r["bias"] for r in mine}):
      at = [r for r in mine if r["bias"] == b]
      v = _by_prompt(at, 2)
      if len(v) < 2:
        v = [r["false_premise_agreement_after"] for r in at]
      m, l, h = t_interval(v)
      xs.append(b), ys.append(m), lo.append(m - l), hi.append(h - m)
    ax.errorbar(xs, ys, yerr=[lo, hi], color=c, marker="o", capsize=3, label=f"β = {k:g}")
    drew = True
  before = [
    r["false_premise_agreement_before"]
    for r in rows
    if r.get("false_premise_agreement_before") is not None
  ]
  if before:
    ax.axhline(float(np.mean(before)), color="grey", ls="--", lw=1, label="starting model")
  if not drew:
    return False
  ax.set_xlabel("annotator bias (fraction of pairs labelled by agreement)")
  ax.set_ylabel("false-premise agreement after PPO")
  ax.set_ylim(-0.02, 1.02)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  report._save_png(fig, path)
  return True
