"""Algorithms side by side (issue 13): several pipeline configs, several seeds, one table.

``run(cfg, workdir)`` (task ``"compare"``, ``configs/algorithms.py``) runs every arm — a
pipeline config file such as ``configs/grpo.py`` — for every seed, all from ONE data
directory and ONE base model (``workdir/shared``, or ``config.base_path``), so that the arms
differ only in their policy stage; then :func:`write_comparison` writes ``README.md`` (the
table), ``algorithms.png`` (gold reward and gold win rate against KL, per algorithm, with
95% Student-t intervals over seeds) and ``rows.json`` to ``config.out_dir``.

Fairness is checked before any work: every arm must have the same label budget
(``feedback.pairs_per_round × rounds``) and every RL arm the same number of policy samples
per round (``ppo.iterations × ppo.batch_size × group_size``); DPO / IPO draw no rollouts and
learn from the same labelled pairs. Seeds vary labels, sampling, reward model and policy
training; the data and base model are shared (built with the first seed).

Each run is a pipeline workdir ``workdir/runs/<arm>_s<seed>``, resumable like any other; a
rerun skips the finished runs and rewrites the results. Across processes every process runs
the arms (the pipeline shares its work out, :mod:`rlhf_jax.train.pipeline`) and process 0
alone writes the files here (run folders, configs, shared round 1, wall times, results).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pathlib
import shutil
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from rlhf_jax import distributed
from rlhf_jax import ppo as ppo_lib
from rlhf_jax import workdir as workdir_lib
from rlhf_jax.data import files
from rlhf_jax.train.metrics import markdown_table
from rlhf_jax.train.seeds import t_interval

_log = logging.getLogger(__name__)

__all__ = [
  "Config",
  "check_config",
  "arm_configs",
  "budget",
  "run",
  "run_arms",
  "check_run_folder",
  "round1_inputs",
  "share_round1",
  "collect_rows",
  "write_comparison",
]


@dataclasses.dataclass(frozen=True)
class Config:
  # "name=path/to/config.py[:variant]", one per algorithm; paths relative to the working
  # directory (the repository root), as --config takes them.
  arms: Tuple[str, ...] = (
    "ppo=configs/sentiment.py:pairwise",
    "grpo=configs/grpo.py",
    "rloo=configs/rloo.py",
    "dpo=configs/dpo.py",
  )
  seeds: Tuple[int, ...] = (0, 1, 2)
  # A base model directory every run starts from ("": pretrain one in workdir/shared/base
  # with the first arm's settings and the first seed).
  base_path: str = ""
  rounds: int = 0  # 0: the arms' own (they must agree); > 0 overrides every arm
  out_dir: str = ""  # "": workdir/results
  # Arms of one seed whose round 1 reads the same inputs up to its reward model
  # (:func:`round1_inputs`: the policy stage's own fields excluded) share round 1's pairs,
  # labels and reward model, computed by the first of them, instead of recomputing them.
  share_round1: bool = True
  title: str = "PPO, GRPO, RLOO and DPO on the sentiment task"


RESULT_NEUTRAL_FIELDS = ("out_dir", "title")
# The study's run list may grow (new arms or seeds are run, finished runs read as they are):
# each run folder is checked against its own config (check_run_folder), and the shared data
# and base model against what made them (_shared_base).
RUN_LIST_FIELDS = ("arms", "seeds")


def _split_arm(spec: str) -> Tuple[str, str]:
  name, sep, path = spec.partition("=")
  if not sep or not name or not path:
    raise ValueError(f"expected 'name=path/to/config.py[:variant]', got {spec!r}")
  return name, path


def arm_configs(cfg: Config) -> Dict[str, Any]:
  """``{arm name: validated pipeline Config}`` (rounds overridden when ``cfg.rounds``).
  Raises ConfigError naming ``config.arms``."""
  from rlhf_jax import config_schema
  from rlhf_jax import main as entry

  out, errors = {}, []
  for i, spec in enumerate(cfg.arms):
    try:
      name, path = _split_arm(spec)
      if name in out:
        raise ValueError(f"arm name {name!r} appears twice")
      raw = entry.load_config_file(path)
      if cfg.rounds:
        raw.rounds = cfg.rounds
      module, arm = entry.validate(raw)
      if module.__name__ != "rlhf_jax.train.pipeline":
        raise ValueError(f"{path} is task {raw.task!r}; arms must be pipeline configs")
      out[name] = arm
    except Exception as e:  # noqa: BLE001 - every problem of one arm, reported with its index
      errors.append(f"config.arms[{i}]={spec!r}: {type(e).__name__}: {e}")
  if errors:
    raise config_schema.ConfigError("\n".join(errors))
  return out


def budget(arm) -> Dict[str, int]:
  """The label budget and policy samples of one pipeline config."""
  hp = arm.ppo.hparams
  rl = hp.algorithm not in ppo_lib.PREFERENCE_ALGORITHMS
  per_round = arm.ppo.iterations * arm.ppo.batch_size * hp.group_size if rl else 0
  return {
    "rounds": arm.rounds,
    "labels": arm.feedback.pairs_per_round * arm.rounds,
    "policy_samples_per_round": per_round,
  }


def check_config(cfg: Config) -> None:
  """Arms load and validate, and they compare at equal labels and policy samples."""
  from rlhf_jax import config_schema

  errors = []
  if not cfg.arms:
    errors.append("config.arms: empty; list at least one 'name=path/to/config.py'")
  if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds):
    errors.append(f"config.seeds={cfg.seeds!r}: expected distinct seeds, at least one")
  if cfg.rounds < 0:
    errors.append(f"config.rounds={cfg.rounds}: expected >= 0")
  if errors:
    raise config_schema.ConfigError("\n".join(errors))
  budgets = {name: budget(arm) for name, arm in arm_configs(cfg).items()}
  for key in ("rounds", "labels"):
    if len({b[key] for b in budgets.values()}) > 1:
      errors.append(
        f"config.arms: the arms differ in {key} "
        f"({', '.join(f'{n}={b[key]}' for n, b in budgets.items())}); the comparison needs "
        "them equal (set config.rounds, or the arms' feedback.pairs_per_round)"
      )
  samples = {n: b["policy_samples_per_round"] for n, b in budgets.items()}
  if len({s for s in samples.values() if s}) > 1:
    errors.append(
      "config.arms: the RL arms differ in policy samples per round (ppo.iterations x "
      f"ppo.batch_size x group_size: {', '.join(f'{n}={s}' for n, s in samples.items() if s)})"
    )
  if errors:
    raise config_schema.ConfigError("\n".join(errors))


def _shared_base(cfg: Config, arms: Mapping[str, Any], root: pathlib.Path) -> Tuple[str, str]:
  """``(data dir, base model dir)`` shared by every run: built once under ``root/shared``."""
  from rlhf_jax.train import common
  from rlhf_jax.train import pipeline as pl

  first = dataclasses.replace(next(iter(arms.values())), seed=cfg.seeds[0])
  shared = root / "shared"
  distributed.lead_only(lambda: _record_shared(shared, cfg, first), "compare: shared/")
  tokenizer = pl.prepare_data(first.data, shared / "data", first.seed, first.base.path)
  if cfg.base_path or first.base.path:  # a given checkpoint (the assistant task's SmolLM2)
    return str(shared / "data"), cfg.base_path or first.base.path
  mesh = common.build_mesh(first.mesh)
  pl.pretrain_base(first.base, shared / "data", shared / "base", tokenizer, mesh, first.seed)
  return str(shared / "data"), str(shared / "base" / "model")


def _record_shared(shared: pathlib.Path, cfg: Config, first) -> None:
  """Refuses (``UsageError`` naming the file and fields) a ``shared/`` folder whose data or
  base model other settings made — the study's first arm or first seed changed since, or
  the arm's data or base section — and records the settings in ``shared/config.json``
  otherwise. A folder made before this record existed is taken as it is."""
  from rlhf_jax import config_schema
  from rlhf_jax.train import pipeline as pl

  made_by = {
    "seed": first.seed,
    "data": config_schema.to_dict(first.data),
    "base": config_schema.to_dict(first.base),
    "base_path": cfg.base_path,
  }
  made_by = json.loads(json.dumps(made_by, default=str))
  path = shared / "config.json"
  if path.exists():
    old = json.loads(path.read_text(encoding="utf-8"))
    neutral = tuple(f for f in pl.RESULT_NEUTRAL_FIELDS if f.startswith(("data.", "base.")))
    changed = config_schema.diff(old, made_by, neutral)
    if changed:
      raise workdir_lib.UsageError(
        f"{shared}: its data and base model were made by other settings (the study's first "
        "arm and first seed make them); these differ (made by -> now):\n  "
        + "\n  ".join(changed)
        + f"\nKeep the first arm and seed of the run that made {shared}, or pass a new --workdir."
      )
  files.atomic_write_json(path, made_by)


# What a round's first stages (pairs sampled from the base policy, their labels, the reward
# model) read from a pipeline config: everything but the policy stage's own fields, plus the
# sampling ones that the policy stage's section holds.
_SAMPLING_FIELDS = ("response_len", "temperature", "top_k", "top_p", "min_response_len")
_ROUND1_FILES = ("pairs.npz", "labels.json", "preferences.jsonl", "reward")


def round1_inputs(arm) -> Dict[str, Any]:
  """The inputs of round 1 up to and including its reward model, as a plain dict: two arms
  (with the same seed) whose dicts are equal label the same pairs and train the same reward
  model, so the second can take the first's. The policy stage's fields (``ppo`` but its
  sampling settings, ``dpo``) and result-neutral ones are left out."""
  from rlhf_jax import config_schema
  from rlhf_jax.train import pipeline as pl

  d = config_schema.to_dict(arm)
  for key in ("ppo", "dpo", "targets", "mesh", "max_skipped_fraction"):
    d.pop(key, None)
  for key in ("num_samples_in_report", "answers_per_prompt"):  # evaluation of the policy only
    d.get("eval", {}).pop(key, None)
  hp = arm.ppo.hparams
  d["sampling"] = {k: getattr(hp, k) for k in _SAMPLING_FIELDS}
  d["sampling"].update(batch=pl.sampling_batch(arm.ppo, hp), stop_text=arm.ppo.stop_text)
  d.pop("rounds", None)  # round 1 is the same whatever follows it
  return d


def share_round1(src: pathlib.Path, dst: pathlib.Path) -> bool:
  """Copies round 1's pairs, labels and finished reward model from run ``src`` to run
  ``dst`` (nothing when ``dst`` already has them or ``src`` has not finished round 1), and
  the finished supervised stage (``sft/``, the model those pairs were sampled from) when
  ``src`` has one and ``dst`` does not. The pipeline then finds them and goes straight to
  the policy stage. Returns whether it copied."""
  s, d = src / "round_1", dst / "round_1"
  if not (s / "DONE").exists() or (d / "pairs.npz").exists():
    return False
  if (src / "sft" / "DONE").exists() and not (dst / "sft" / "DONE").exists():
    tmp_sft = dst / "sft.shared.tmp"
    if tmp_sft.exists():
      shutil.rmtree(tmp_sft)
    shutil.copytree(src / "sft", tmp_sft, ignore=shutil.ignore_patterns("checkpoints"))
    if (dst / "sft").exists():  # an unfinished attempt of dst's own
      shutil.rmtree(dst / "sft")
    os.replace(tmp_sft, dst / "sft")
  d.mkdir(parents=True, exist_ok=True)
  tmp = dst / "round_1.shared.tmp"
  if tmp.exists():
    shutil.rmtree(tmp)
  tmp.mkdir()
  for name in _ROUND1_FILES:
    if (s / name).is_dir():
      shutil.copytree(s / name, tmp / name)
    elif (s / name).exists():
      shutil.copy2(s / name, tmp / name)
  # pairs.npz last: its presence is what tells the pipeline the round is labelled
  for name in sorted(os.listdir(tmp), key=lambda n: n == "pairs.npz"):
    os.replace(tmp / name, d / name)
  tmp.rmdir()
  return True


def check_run_folder(rdir: pathlib.Path, arm_cfg) -> None:
  """Refuses (``UsageError`` naming the folder and the fields) a run folder that another
  config made — the arm's config file edited since — as the entry point refuses a workdir:
  its finished rounds would otherwise be read as this config's results."""
  from rlhf_jax import config_schema
  from rlhf_jax.train import pipeline as pl

  workdir_lib.check_config(rdir, config_schema.to_dict(arm_cfg), pl)


def run(cfg: Config, workdir: str) -> Dict[str, Any]:
  """Every arm × seed as a pipeline run from the shared data and base model, then the table."""
  arms, run_dirs = run_arms(cfg, workdir)
  out = pathlib.Path(cfg.out_dir or pathlib.Path(workdir) / "results")
  budgets = {name: budget(arm) for name, arm in arms.items()}
  distributed.lead_only(  # process 0 reads the runs and writes the table
    lambda: write_comparison(collect_rows(run_dirs), out, budgets, cfg.title), "compare: results"
  )
  return {"runs": len(run_dirs), "out_dir": str(out)}


def run_arms(
  cfg: Config, workdir: str
) -> Tuple[Dict[str, Any], Dict[Tuple[str, int], pathlib.Path]]:
  """Every arm × seed as a resumable pipeline run under ``workdir/runs/<arm>_s<seed>``, all
  from the shared data and base model. Returns ``({arm: config}, {(arm, seed): run dir})``."""
  from rlhf_jax import config_schema
  from rlhf_jax.train import pipeline as pl

  check_config(cfg)
  root = pathlib.Path(workdir)
  arms = arm_configs(cfg)
  data_dir, base_path = _shared_base(cfg, arms, root)
  run_dirs: Dict[Tuple[str, int], pathlib.Path] = {}
  for seed in cfg.seeds:
    done_round1: List[Tuple[Dict[str, Any], pathlib.Path]] = []  # this seed's finished runs
    for name, arm in arms.items():
      rdir = root / "runs" / f"{name}_s{seed}"
      arm_cfg = dataclasses.replace(
        arm, seed=seed, base=dataclasses.replace(arm.base, path=base_path)
      )

      done = rdir / "wall_seconds.json"

      def finished(rdir=rdir, arm_cfg=arm_cfg, done=done) -> bool:  # process 0
        """Whether this run completed earlier with this very config (its results stand)."""
        if not (done.exists() and (rdir / f"round_{arm_cfg.rounds}" / "DONE").exists()):
          return False
        now = json.loads(json.dumps(config_schema.to_dict(arm_cfg)))
        return json.loads((rdir / "config.json").read_text()) == now

      if distributed.from_lead(finished, f"{rdir.name}: finished?"):
        _log.info("%s: finished earlier with this config; its results are read as they are", rdir)
        run_dirs[(name, seed)] = rdir
        done_round1.append((round1_inputs(arm_cfg), rdir))
        continue

      def prepare(rdir=rdir, arm_cfg=arm_cfg) -> None:  # process 0
        # refuses a folder another config made (check_run_folder) before writing anything
        workdir_lib.record_config(rdir, config_schema.to_dict(arm_cfg), pl)
        if not (rdir / "data").exists():
          os.symlink(os.path.abspath(data_dir), rdir / "data", target_is_directory=True)

      distributed.lead_only(prepare, f"{rdir.name}: run folder")
      inputs = round1_inputs(arm_cfg)
      if cfg.share_round1:
        for other_inputs, other in done_round1:
          if other_inputs == inputs and distributed.from_lead(
            lambda other=other, rdir=rdir: share_round1(other, rdir),
            f"{rdir.name}: round 1 from {other.name}",
          ):
            _log.info("%s: round 1's labels and reward model taken from %s", rdir, other)
            break
      t0 = time.perf_counter()
      pl.run(arm_cfg, str(rdir))

      def record_wall(done=done, seconds=time.perf_counter() - t0) -> None:  # process 0
        if not done.exists():  # the first completion's wall time (a resumed run's is partial)
          files.atomic_write_json(done, {"seconds": seconds})

      distributed.lead_only(record_wall, f"{rdir.name}: wall time")
      run_dirs[(name, seed)] = rdir
      done_round1.append((inputs, rdir))
  return arms, run_dirs


_ROW_KEYS = (
  "kl",
  "gold_reward_mean",
  "gold_reward_ref_mean",
  "win_rate",
  "win_ci_low",
  "win_ci_high",
  "independent_win_rate",
  "degenerate_fraction",
  "rm_accuracy",
  "n_labels",
  "ppo_seconds",
  "round_seconds",
)


def collect_rows(run_dirs: Mapping[Tuple[str, int], os.PathLike]) -> List[dict]:
  """One row per (algorithm, seed, round) from each run's ``round_<r>/eval.json``."""
  rows = []
  for (name, seed), rdir in run_dirs.items():
    for path in sorted(pathlib.Path(rdir).glob("round_*/eval.json")):
      ev = json.loads(path.read_text())
      row = {"algorithm": name, "seed": seed, "round": int(ev["round"])}
      row.update({k: ev[k] for k in _ROW_KEYS if k in ev})
      wall = pathlib.Path(rdir) / "wall_seconds.json"
      if wall.exists():  # the whole run (every round, reference sampling included)
        row["run_seconds"] = float(json.loads(wall.read_text())["seconds"])
      rows.append(row)
  return rows


def _ci(values: Sequence[float], spec: str = ".3f") -> str:
  """Mean [95% t interval] over seeds; "—" when no seed has the value."""
  if not values:
    return "—"
  mean, lo, hi = t_interval(values)
  if len(values) == 1:
    return format(mean, spec)
  return f"{format(mean, spec)} [{format(lo, spec)}, {format(hi, spec)}]"


def _spread(values: Sequence[float]) -> str:
  """Wall seconds over seeds as ``median (min–max)``: times depend on what else the machine
  ran, so a t interval (which can go below zero) says less than the range."""
  if not values:
    return "—"
  if len(values) == 1:
    return f"{values[0]:.0f}"
  return f"{np.median(values):.0f} ({min(values):.0f}–{max(values):.0f})"


def _values(rows: Sequence[Mapping[str, Any]], key: str) -> List[float]:
  return [
    float(r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])
  ]


def write_comparison(
  rows: Sequence[Mapping[str, Any]],
  out_dir: os.PathLike | str,
  budgets: Optional[Mapping[str, Mapping[str, int]]] = None,
  title: str = "Algorithms side by side",
) -> str:
  """``README.md`` (the last round per algorithm, then every round), ``algorithms.png`` and
  ``rows.json`` in ``out_dir``. ``rows``: dicts with ``algorithm, seed, round`` and the
  evaluation's ``kl, gold_reward_mean, win_rate, ppo_seconds, round_seconds`` (others
  optional). Intervals are 95% Student-t over seeds. Returns the markdown."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  rows = [dict(r) for r in rows]
  algorithms = list(dict.fromkeys(r["algorithm"] for r in rows))
  budgets = dict(budgets or {})
  lines = [f"# {title}", ""]
  seeds = sorted({r["seed"] for r in rows})
  lines += [
    f"{len(algorithms)} algorithms × {len(seeds)} seeds ({', '.join(map(str, seeds))}), one "
    "data set and one base model for all runs. Mean over seeds with its 95% Student-t "
    "interval. Gold win rate: against the reference policy's samples on the evaluation "
    "prompts, ties half; independent: the same under the task's independent judge (no label "
    "came from it). KL: to the reference, nats per response. Times: wall seconds of the "
    "last round's policy stage, of that round, and of the whole run, median (range) over "
    "seeds; they depend on the machine's other load. Arms of one seed share round 1's labels "
    "and reward model when its inputs are equal (config.share_round1; the same RM accuracy), "
    "so the policy stage is the part that differs.",
    "",
    "## Last round",
    "",
  ]
  headers = [
    "algorithm",
    "seeds",
    "labels",
    "policy samples / round",
    "KL",
    "gold reward",
    "gold win rate",
    "independent win rate",
    "degenerate",
    "RM accuracy",
    "policy stage s",
    "round s",
    "run s",
  ]
  table = []
  for name in algorithms:
    mine = [r for r in rows if r["algorithm"] == name]
    last = max(r["round"] for r in mine)
    at = [r for r in mine if r["round"] == last]
    b = budgets.get(name, {})
    table.append(
      [
        name,
        len(at),
        b.get("labels", int(_values(at, "n_labels")[0]) if _values(at, "n_labels") else "?"),
        b.get("policy_samples_per_round", "?") or "— (pairs)",
      ]
      + [
        _ci(_values(at, k))
        for k in (
          "kl",
          "gold_reward_mean",
          "win_rate",
          "independent_win_rate",
          "degenerate_fraction",
          "rm_accuracy",
        )
      ]
      + [_spread(_values(at, k)) for k in ("ppo_seconds", "round_seconds", "run_seconds")]
    )
  lines += [markdown_table(headers, table), ""]
  ref = _values(rows, "gold_reward_ref_mean")
  if ref:
    lines += [f"Reference policy's gold reward: {np.mean(ref):.3f}.", ""]
  lines += ["## Every round", ""]
  per_round = []
  for name in algorithms:
    for rnd in sorted({r["round"] for r in rows if r["algorithm"] == name}):
      at = [r for r in rows if r["algorithm"] == name and r["round"] == rnd]
      per_round.append(
        [name, rnd, len(at)] + [_ci(_values(at, k)) for k in ("kl", "gold_reward_mean", "win_rate")]
      )
  lines += [
    markdown_table(
      ["algorithm", "round", "seeds", "KL", "gold reward", "gold win rate"], per_round
    ),
    "",
  ]
  if _plot_comparison(rows, algorithms, str(out / "algorithms.png")):
    lines += ["## Gold reward and gold win rate against KL", "", "![](algorithms.png)", ""]
  text = "\n".join(lines)
  files.atomic_write_text(out / "README.md", text)
  files.atomic_write_json(out / "rows.json", rows)
  return text


def _plot_comparison(rows, algorithms, path: str) -> bool:
  """Two panels against KL: per-seed points (faint) and the per-round mean with 95% t
  intervals in both directions, rounds joined in order; the reference at KL 0."""
  import matplotlib

  from rlhf_jax.train import report

  fig = report._new_figure(11.0, 4.6)
  axes = fig.subplots(1, 2)
  colours = matplotlib.colormaps["tab10"]
  drew = False
  for ax, key, label in (
    (axes[0], "gold_reward_mean", "gold reward"),
    (axes[1], "win_rate", "gold win rate vs reference"),
  ):
    for i, name in enumerate(algorithms):
      c = colours(i % 10)
      mine = [r for r in rows if r["algorithm"] == name]
      pts = [(r["kl"], r[key]) for r in mine if _values([r], "kl") and _values([r], key)]
      if not pts:
        continue
      ax.scatter(*zip(*pts), color=c, alpha=0.3, s=14)
      means = []
      for rnd in sorted({r["round"] for r in mine}):
        at = [r for r in mine if r["round"] == rnd]
        kl, y = _values(at, "kl"), _values(at, key)
        if kl and y:
          means.append((t_interval(kl), t_interval(y)))
      xs = [m[0][0] for m in means]
      ys = [m[1][0] for m in means]
      ax.errorbar(
        xs,
        ys,
        xerr=[[m[0][0] - m[0][1] for m in means], [m[0][2] - m[0][0] for m in means]],
        yerr=[[m[1][0] - m[1][1] for m in means], [m[1][2] - m[1][0] for m in means]],
        color=c,
        marker="o",
        capsize=3,
        label=name,
      )
      drew = True
    if key == "gold_reward_mean" and _values(rows, "gold_reward_ref_mean"):
      ax.plot([0.0], [np.mean(_values(rows, "gold_reward_ref_mean"))], "kD", label="reference")
    if key == "win_rate":
      ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("KL to the reference (nats)")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  if not drew:
    return False
  fig.suptitle("Mean over seeds per round, 95% t intervals; faint: single seeds")
  report._save_png(fig, path)
  return True
