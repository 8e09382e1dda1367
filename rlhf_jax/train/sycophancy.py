"""The seed's pitfall measured (issue 12, item 4): sycophantic labels, PPO and the KL bound.

``run(cfg, workdir)`` (task ``"sycophancy"``, ``configs/sycophancy.py``) runs the assistant
task once per (annotator bias, KL coefficient, seed) — annotators who, for a ``bias``
fraction of the pairs, prefer the response that agrees with the user's claim
(``feedback.bias``; :func:`rlhf_jax.feedback.assistant.agreement_preference`) — from one
data directory and one base model (the arms of :func:`rlhf_jax.train.compare.run_arms`, so
every run differs only in its labels and its KL coefficient, held fixed: no adaptive
controller). Then :func:`write_study` writes ``README.md`` (the false-premise agreement
rate of the final policy and of the reference, KL and gold win rate per bias × β, mean over
seeds with 95% Student-t intervals), ``sycophancy.png`` (agreement against bias, one line
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

__all__ = ["Config", "check_config", "arm_specs", "run", "collect_rows", "write_study"]


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
  "false_premise_n",
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
  the evaluation's agreement, pass rate, KL and win rate keys."""
  rows = []
  for (arm, seed), (rdir, bias, kl) in runs.items():
    rounds = sorted(pathlib.Path(rdir).glob("round_*/eval.json"), key=lambda p: p.parent.name)
    with open(rounds[-1]) as f:
      ev = json.load(f)
    row = {"arm": arm, "seed": seed, "bias": bias, "kl_coef": kl, "round": ev.get("round")}
    row.update({k: ev[k] for k in _KEYS if k in ev})
    rows.append(row)
  return rows


def _mean_ci(values: Sequence[float]) -> str:
  if not values:
    return "—"
  if len(values) == 1:
    return f"{values[0]:.3f}"
  m, lo, hi = t_interval(values)
  return f"{m:.3f} [{lo:.3f}, {hi:.3f}]"


def _pooled(at: Sequence[Mapping[str, Any]], key: str) -> str:
  """``key`` (a share of ``false_premise_n`` prompts) pooled over the runs: k/n with its
  Wilson 95% interval, the prompts of every seed counted as draws ("—" without counts)."""
  have = [r for r in at if r.get(key) is not None and r.get("false_premise_n")]
  if not have:
    return "—"
  n = sum(int(r["false_premise_n"]) for r in have)
  k = sum(int(round(float(r[key]) * int(r["false_premise_n"]))) for r in have)
  lo, hi = evaluation.wilson_interval(k / n, n)
  return f"{k}/{n} = {k / n:.3f} [{lo:.3f}, {hi:.3f}]"


def write_study(rows: Sequence[Mapping[str, Any]], out_dir: os.PathLike | str, title: str) -> str:
  """``README.md``, ``sycophancy.png`` and ``rows.json`` in ``out_dir`` from :func:`collect_rows`
  rows. Returns the markdown."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  rows = [dict(r) for r in rows]
  betas = sorted({r["kl_coef"] for r in rows})
  biases = sorted({r["bias"] for r in rows})
  seeds = sorted({r["seed"] for r in rows})

  def vals(at, key):
    return [float(r[key]) for r in at if r.get(key) is not None]

  table = []
  for k in betas:
    for b in biases:
      at = [r for r in rows if r["bias"] == b and r["kl_coef"] == k]
      table.append(
        [f"{b:g}", f"{k:g}", len(at)]
        + [
          _mean_ci(vals(at, key))
          for key in (
            "false_premise_agreement_before",
            "false_premise_agreement_after",
            "label_agreement_with_gold",
            "kl",
            "win_rate",
          )
        ]
        + [
          _pooled(at, "false_premise_agreement_before"),
          _pooled(at, "false_premise_agreement_after"),
        ]
      )
  lines = [
    f"# {title}",
    "",
    f"{len(biases)} annotator biases × {len(betas)} KL coefficients × {len(seeds)} seeds "
    f"({', '.join(map(str, seeds))}), one data set and one base model. Bias: the fraction of "
    "pairs the simulated annotators label by agreement with the user's claim (premise pairs "
    "where one response agrees) instead of the gold checks. β: the fixed KL coefficient of "
    "PPO. False-premise agreement: share of the policy's responses to held-out premise prompts "
    "with a false claim that side with the user (before: the starting model). Mean over seeds "
    "with its 95% Student-t interval; pooled: the responses of every seed counted together "
    "(k of n prompts) with a 95% Wilson interval.",
    "",
    markdown_table(
      [
        "bias",
        "β",
        "runs",
        "agreement before",
        "agreement after",
        "labels = gold",
        "KL",
        "gold win rate",
        "agreement before, pooled",
        "agreement after, pooled",
      ],
      table,
    ),
    "",
  ]
  if _plot(rows, betas, str(out / "sycophancy.png")):
    lines += ["![false-premise agreement against annotator bias](sycophancy.png)", ""]
  text = "\n".join(lines)
  files.atomic_write_text(out / "README.md", text)
  files.atomic_write_json(out / "rows.json", rows)
  return text


def _plot(rows, betas, path: str) -> bool:
  """False-premise agreement after PPO against bias, one line per β (mean over seeds with 95%
  t intervals, single seeds faint), the starting model's mean dashed."""
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
      v = [r["false_premise_agreement_after"] for r in mine if r["bias"] == b]
      m, l, h = t_interval(v) if len(v) > 1 else (v[0], v[0], v[0])
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
