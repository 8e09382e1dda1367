"""The run report: ``report.md`` and PNG plots in the run's workdir, from plain Python data.

The pipeline collects one dict of host scalars per round (already fetched from the device)
and calls :func:`write_round_report` after each round, so a crashed run still leaves the
latest report. :func:`write_overoptimization_report` tabulates and plots a reward
over-optimisation sweep (Gao, Schulman & Hilton 2022) with the fits of
:mod:`rlhf_jax.evaluation`.

Both functions write every file atomically (temporary file + ``os.replace``), draw with
matplotlib's Agg canvas directly (no ``pyplot``, no global backend change), and return the
markdown file's path. Missing or NaN values render as ``–``. In a multi-process run, call them
on process 0 only.
"""

from __future__ import annotations

import datetime
import math
import numbers
import os
import re
import uuid
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from rlhf_jax import evaluation
from rlhf_jax.train.metrics import markdown_table

__all__ = [
  "MISSING",
  "ROUND_COLUMNS",
  "write_round_report",
  "chat_transcript",
  "assistant_section",
  "write_overoptimization_report",
]

MISSING = "–"
"""Rendered for a missing, ``None`` or NaN value."""

PathLike = Union[str, os.PathLike]


# ----------------------------------------------------------------------------- formatting


def _number(x: Any) -> Optional[float]:
  """A finite real as ``float``; ``None`` for missing / non-numeric / NaN / inf."""
  if x is None or isinstance(x, (bool, np.bool_)):
    return None
  if isinstance(x, (np.ndarray, np.generic)) or hasattr(x, "__array__"):
    arr = np.asarray(x)
    if arr.ndim != 0 or arr.dtype.kind not in "iuf":
      return None
    x = arr.item()
  if isinstance(x, numbers.Real):
    x = float(x)
    return x if math.isfinite(x) else None
  return None


def _fmt(x: Any, spec: str = ".4g") -> str:
  """Cell text: ``–`` for missing / NaN, ints as ints, floats with ``spec``, else ``str``."""
  if x is None:
    return MISSING
  if isinstance(x, (bool, np.bool_)):
    return "yes" if x else "no"
  if isinstance(x, (numbers.Integral, np.integer)):
    return str(int(x))
  value = _number(x)
  if value is not None:
    return format(value, spec)
  if isinstance(x, (float, np.floating)):
    return str(float(x)) if math.isinf(x) else MISSING
  return str(x)


def _fmt_win(row: Mapping[str, Any]) -> str:
  rate = _number(row.get("win_rate"))
  if rate is None:
    return MISSING
  lo, hi = _number(row.get("win_ci_low")), _number(row.get("win_ci_high"))
  if lo is None or hi is None:
    return f"{rate:.3f}"
  return f"{rate:.3f} [{lo:.3f}, {hi:.3f}]"


def _fmt_duration(seconds: float) -> str:
  s = int(round(seconds))
  h, rem = divmod(s, 3600)
  m, sec = divmod(rem, 60)
  return f"{h}:{m:02d}:{sec:02d}"


def _text_cell(text: Any, max_chars: int) -> str:
  """Sample text for a markdown cell: HTML-escaped, CRs dropped, truncated with ``…``.

  ``markdown_table`` then escapes ``|`` and turns newlines into ``<br>``.
  """
  if text is None:
    return MISSING
  s = str(text).replace("\r\n", "\n").replace("\r", "\n")
  if len(s) > max_chars:
    s = s[:max_chars] + "…"
  return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
  out = []
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.extend(_flatten(v, key + "."))
    else:
      out.append((key, v))
  return out


# ----------------------------------------------------------------------------- atomic files


def _tmp_name(path: str) -> str:
  """A fresh name next to ``path`` (same filesystem, so ``os.replace`` is atomic)."""
  head, tail = os.path.split(path)
  return os.path.join(head, f".{tail}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _atomic_write_text(path: str, text: str) -> None:
  tmp = _tmp_name(path)
  try:
    with open(tmp, "x", encoding="utf-8") as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _new_figure(width: float, height: float):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
  FigureCanvasAgg(fig)
  return fig


def _save_png(fig, path: str) -> None:
  tmp = _tmp_name(path)
  try:
    with open(tmp, "xb") as f:
      fig.savefig(f, format="png")
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


# ----------------------------------------------------------------------------- round report

ROUND_COLUMNS: tuple[tuple[str, str], ...] = (
  ("round", "round"),
  ("n_labels", "labels"),
  ("win_rate", "win rate [CI]"),
  ("independent_win_rate", "win rate, independent judge"),
  ("kl", "KL"),
  ("rm_accuracy", "RM acc"),
  ("degenerate_fraction", "degenerate"),
  ("perplexity_ratio", "ppl ratio"),
)
"""``(key, header)`` of the headline per-round table, in order. Every other key of the round
dicts goes to the details section (one row per key, one column per round)."""

_CONSUMED = {k for k, _ in ROUND_COLUMNS} | {"win_ci_low", "win_ci_high"}
_TARGET_RE = re.compile(r"^\s*(>=|<=|==|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")
_OPS: dict[str, Callable[[float, float], bool]] = {
  ">=": lambda v, t: v >= t,
  "<=": lambda v, t: v <= t,
  ">": lambda v, t: v > t,
  "<": lambda v, t: v < t,
  "==": lambda v, t: v == t,
}


def _parse_target(name: str, spec: Any) -> tuple[str, float]:
  """A target spec -> ``(op, threshold)``: a number means ``>=``; ``">= 0.6"``; ``("<", 5)``."""
  if _number(spec) is not None:
    return ">=", float(_number(spec))
  if isinstance(spec, str):
    m = _TARGET_RE.match(spec)
    if m:
      return m.group(1), float(m.group(2))
  elif isinstance(spec, (tuple, list)) and len(spec) == 2 and spec[0] in _OPS:
    if _number(spec[1]) is not None:
      return spec[0], float(_number(spec[1]))
  raise ValueError(
    f"targets[{name!r}] = {spec!r}: expected a number (meaning >=), a string "
    "like '>= 0.6' or '<= 10', or a tuple (op, threshold) with op in "
    f"{sorted(_OPS)}"
  )


def _round_table(rounds: Sequence[Mapping[str, Any]]) -> str:
  headers = [h for _, h in ROUND_COLUMNS]
  rows = []
  for r in rounds:
    rows.append(
      [_fmt_win(r) if key == "win_rate" else _fmt(r.get(key)) for key, _ in ROUND_COLUMNS]
    )
  return markdown_table(headers, rows)


def _details_table(rounds: Sequence[Mapping[str, Any]]) -> str:
  """Every other per-round value: one row per key (first-seen order), one column per round."""
  keys: list[str] = []
  for r in rounds:
    keys += [k for k in r if k not in _CONSUMED and k not in keys]
  headers = ["metric"] + [f"round {_fmt(r.get('round', i + 1))}" for i, r in enumerate(rounds)]
  return markdown_table(headers, [[k] + [_fmt(r.get(k)) for r in rounds] for k in keys])


def _targets_section(
  targets: Mapping[str, Any], rounds: Sequence[Mapping[str, Any]], timings: Mapping[str, Any]
) -> list[str]:
  last = rounds[-1] if rounds else {}
  rows, n_met = [], 0
  for name, spec in targets.items():
    op, threshold = _parse_target(name, spec)
    raw = last.get(name, timings.get(name))
    value = _number(raw)
    met = value is not None and _OPS[op](value, threshold)
    n_met += met
    rows.append([name, f"{op} {threshold:g}", _fmt(value), "yes" if met else "no"])
  where = f"round {_fmt(last.get('round'))}" if rounds else "no rounds yet"
  return [
    "## Targets",
    "",
    f"{n_met} of {len(rows)} met (values from the last round, {where}, or the timings; "
    f"a missing value counts as not met).",
    "",
    markdown_table(["target", "goal", "value", "met"], rows),
    "",
  ]


def _series(rounds: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
  """(positions in ``rounds``, values) of the rounds where ``key`` is a finite number."""
  xs, ys = [], []
  for i, r in enumerate(rounds):
    v = _number(r.get(key))
    if v is not None:
      xs.append(i)
      ys.append(v)
  return xs, ys


def _plot_win_rate(rounds, path: str) -> bool:
  labels, rates, lo_err, hi_err, has_ci = [], [], [], [], []
  for i, r in enumerate(rounds):
    rate = _number(r.get("win_rate"))
    if rate is None:
      continue
    lo, hi = _number(r.get("win_ci_low")), _number(r.get("win_ci_high"))
    labels.append(str(r.get("round", i)))
    rates.append(rate)
    ok = lo is not None and hi is not None
    has_ci.append(ok)
    lo_err.append(max(rate - lo, 0.0) if ok else 0.0)
    hi_err.append(max(hi - rate, 0.0) if ok else 0.0)
  if not rates:
    return False
  fig = _new_figure(max(5.0, 0.7 * len(rates) + 2.5), 4.0)
  ax = fig.add_subplot()
  x = np.arange(len(rates))
  ax.bar(x, rates, color="tab:blue", alpha=0.8, width=0.6, label="win rate (ties = ½)")
  ci = np.array(has_ci)
  if ci.any():
    ax.errorbar(
      x[ci],
      np.array(rates)[ci],
      yerr=[np.array(lo_err)[ci], np.array(hi_err)[ci]],
      fmt="none",
      ecolor="black",
      capsize=5,
      lw=1.2,
      label="confidence interval",
    )
  ax.axhline(0.5, color="tab:red", ls="--", lw=1.2, label="parity (50%)")
  for xi, rate, h in zip(x, rates, hi_err):
    ax.text(xi, min(rate + h + 0.02, 0.97), f"{rate:.0%}", ha="center", va="bottom", fontsize=9)
  ax.set_xticks(x, labels)
  ax.set_ylim(0.0, 1.05)
  ax.set_xlabel("round")
  ax.set_ylabel("win rate vs reference (gold judge)")
  ax.set_title("Policy win rate against the reference, by round")
  fig.legend(loc="outside lower center", ncols=3, fontsize=8)
  ax.grid(axis="y", alpha=0.3)
  _save_png(fig, path)
  return True


def _plot_reward_vs_kl(rounds, curve, path: str) -> bool:
  import matplotlib

  fig = _new_figure(7.5, 5.4)
  ax = fig.add_subplot()
  ax_p = ax.twinx()
  round_ids = [r.get("round", i) for i, r in enumerate(rounds)]
  curve = list(curve or [])
  for p in curve:
    if p.get("round") not in round_ids:
      round_ids.append(p.get("round"))
  cmap = matplotlib.colormaps["viridis"]
  colour = {rid: cmap(0.85 * i / max(len(round_ids) - 1, 1)) for i, rid in enumerate(round_ids)}
  drew = False

  # Per-iteration trajectory, one segment per round.
  for rid in round_ids:
    pts = [p for p in curve if p.get("round") == rid and _number(p.get("kl")) is not None]
    if not pts:
      continue
    d = np.sqrt(np.maximum([_number(p["kl"]) for p in pts], 0.0))
    for key, axis, ls in (("gold", ax, "-"), ("proxy", ax_p, "--")):
      ys = [_number(p.get(key)) for p in pts]
      sel = [i for i, y in enumerate(ys) if y is not None]
      if sel:
        axis.plot(d[sel], [ys[i] for i in sel], ls=ls, color=colour[rid], lw=1.5, alpha=0.9)
        drew = True

  # End-of-round evaluations (and the reference's gold reward at KL = 0).
  for i, r in enumerate(rounds):
    rid, kl = r.get("round", i), _number(r.get("kl"))
    c = colour[rid]
    ref = _number(r.get("gold_reward_ref_mean"))
    if ref is not None:
      ax.plot([0.0], [ref], marker="D", ms=6, color=c, mfc="white", ls="none")
      drew = True
    if kl is None:
      continue
    d = math.sqrt(max(kl, 0.0))
    gold, proxy = _number(r.get("gold_reward_mean")), _number(r.get("proxy_reward_mean"))
    if gold is not None:
      ax.plot([d], [gold], marker="o", ms=8, color=c, ls="none", mec="black")
      ax.annotate(f"r{rid}", (d, gold), textcoords="offset points", xytext=(6, 6), fontsize=8)
      drew = True
    if proxy is not None:
      ax_p.plot([d], [proxy], marker="s", ms=7, color=c, mfc="none", mew=1.8, ls="none")
      drew = True
  if not drew:
    return False
  if not curve:
    # No per-iteration points: join the round evaluations in order.
    for key, axis, ls in (("gold_reward_mean", ax, "-"), ("proxy_reward_mean", ax_p, "--")):
      pts = [
        (math.sqrt(max(_number(r.get("kl")), 0.0)), _number(r.get(key)))
        for r in rounds
        if _number(r.get("kl")) is not None and _number(r.get(key)) is not None
      ]
      if len(pts) > 1:
        axis.plot(*zip(*pts), ls=ls, color="grey", lw=1.0, zorder=0)

  from matplotlib.lines import Line2D

  handles = [
    Line2D([], [], color="black", ls="-", marker="o", label="gold reward (left axis)"),
    Line2D(
      [], [], color="black", ls="--", marker="s", mfc="none", label="proxy reward (right axis)"
    ),
    Line2D(
      [],
      [],
      color="black",
      ls="none",
      marker="D",
      mfc="white",
      label="gold reward of reference (KL = 0)",
    ),
  ]
  if len(round_ids) > 1:
    handles += [Line2D([], [], color=colour[rid], lw=4, label=f"round {rid}") for rid in round_ids]
  fig.legend(handles=handles, fontsize=8, loc="outside lower center", ncols=3)
  ax.set_xlabel("√KL(policy ‖ reference)  (√nats)")
  ax.set_ylabel("gold reward (solid)")
  ax_p.set_ylabel("proxy reward — reward model (dashed)")
  ax.set_title("Gold vs proxy reward as the policy moves away from the reference")
  ax.grid(alpha=0.3)
  ax.margins(x=0.04, y=0.08)
  _save_png(fig, path)
  return True


def _plot_panels(rounds, panels, title: str, path: str) -> bool:
  """One subplot per panel ``(ylabel, [(key, label, style)], ylim)`` that has any data."""
  present = [p for p in panels if any(_series(rounds, k)[1] for k, _, _ in p[1])]
  if not present:
    return False
  fig = _new_figure(4.2 * len(present) + 0.6, 3.8)
  axes = fig.subplots(1, len(present), squeeze=False)[0]
  for ax, (ylabel, lines, ylim) in zip(axes, present):
    for key, label, style in lines:
      xs, ys = _series(rounds, key)
      if ys:
        ax.plot(xs, ys, style, label=label, lw=1.6, ms=6)
    ax.set_xticks(range(len(rounds)), [str(r.get("round", i)) for i, r in enumerate(rounds)])
    ax.set_xlim(-0.3, len(rounds) - 0.7)
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    if ylim is not None:
      ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle(title)
  _save_png(fig, path)
  return True


def write_round_report(
  workdir: PathLike,
  rounds: Sequence[Mapping[str, Any]],
  samples: Sequence[Mapping[str, Any]] = (),
  config_summary: Optional[Mapping[str, Any]] = None,
  timings: Optional[Mapping[str, Any]] = None,
  targets: Optional[Mapping[str, Any]] = None,
  *,
  curve: Optional[Sequence[Mapping[str, Any]]] = None,
  title: str = "RLHF run report",
  filename: str = "report.md",
  max_sample_chars: int = 600,
  extra_sections: Sequence[str] = (),
) -> str:
  """Writes ``workdir/report.md`` and its plots; returns the report's path.

  Args:
    workdir: run directory (created if missing).
    rounds: one dict of host scalars per round. Known keys (any may be missing; shown ``–``):
      the headline ``ROUND_COLUMNS`` (``round, n_labels, win_rate, win_ci_low, win_ci_high,
      independent_win_rate, kl, rm_accuracy, degenerate_fraction, perplexity_ratio``); every
      other key is listed in the details table.
    samples: dicts ``prompt, before, after, gold_before, gold_after`` (responses of the
      reference / initial policy and of the trained policy, with their gold rewards).
    config_summary: ``{name: value}`` (nested dicts are flattened with dots); ``gold``,
      ``independent_judges`` and ``tie_threshold`` are also named in the rounds' legend.
    timings: ``{phase: seconds}``.
    targets: ``{key: spec}`` checked against the last round's value of ``key`` (or
      ``timings[key]``). ``spec``: a number (goal ``>= number``), a string such as
      ``">= 0.55"`` / ``"<= 12"``, or a tuple ``(op, threshold)``, op in ``>=, <=, >, <, ==``.
    curve: optional per-PPO-iteration points ``{kl, gold, proxy, round}`` drawn as
      trajectories in ``reward_vs_sqrt_kl.png``.
    title: the report's heading.
    filename: the markdown file's name in ``workdir``.
    max_sample_chars: sample texts longer than this are truncated with ``…``.
    extra_sections: markdown lines inserted after the rounds (a task's own results, e.g.
      :func:`assistant_section`).

  Plots (each written only when it has data, and linked from the report):
    ``reward_vs_sqrt_kl.png`` (gold and proxy reward against √KL), ``win_rate_by_round.png``
    (bars, CI error bars, 50% line), ``kl_by_round.png`` (KL, response length, perplexity),
    ``reward_model_by_round.png`` (reward-model accuracy and calibration error).
  Raises:
    ValueError: a target spec is malformed (names the target).
  """
  workdir = os.fspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  rounds = list(rounds)
  timings = dict(timings or {})
  config_summary = dict(config_summary or {})

  lines = [
    f"# {title}",
    "",
    f"Written {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M:%S} UTC, "
    f"{len(rounds)} round(s).",
    "",
  ]
  if targets:
    lines += _targets_section(targets, rounds, timings)

  lines += ["## Rounds", ""]
  if rounds:
    gold = config_summary.get("gold", "the gold scorer")
    judges = config_summary.get("independent_judges") or ()
    judges = judges if isinstance(judges, str) else ", ".join(map(str, judges))
    tau = config_summary.get("tie_threshold")
    tie_rule = (
      f"two responses tie when their scores differ by less than {_fmt(tau)} (the "
      "simulated annotators' rule; it applies to labels, reward-model accuracy and "
      "win rates alike)"
      if tau is not None
      else "ties count half"
    )
    lines += [
      f"Win rate: policy vs reference on held-out prompts under the gold judge "
      f"({gold}), ties counted half, with its 95% Wilson interval; {tie_rule}. "
      f"Independent judge: the win rate under "
      f"{judges + ' (ties: equal scores)' if judges and judges != 'none' else 'no independent judge'}"
      " — a scorer no label came from, which sees exploits of the labeller that the gold "
      "win rate cannot. KL: mean sequence KL(policy ‖ reference) in nats. RM acc: the reward "
      "model's accuracy on decided held-out pairs with noise-free gold labels. "
      "Degenerate: fraction of the policy's responses that are empty, repetitive or "
      "mostly non-words. ppl ratio: perplexity of the policy's text under the reference "
      "over that of the reference's own samples.",
      "",
      _round_table(rounds),
      "",
      "### Details",
      "",
      _details_table(rounds),
      "",
    ]
  else:
    lines += ["No rounds yet.", ""]
  lines += list(extra_sections)

  plots = []
  if rounds or curve:
    if _plot_reward_vs_kl(rounds, curve, os.path.join(workdir, "reward_vs_sqrt_kl.png")):
      plots.append(("Gold and proxy reward vs √KL", "reward_vs_sqrt_kl.png"))
    if _plot_win_rate(rounds, os.path.join(workdir, "win_rate_by_round.png")):
      plots.append(("Win rate by round", "win_rate_by_round.png"))
    drift = [
      ("KL(policy ‖ reference)", [("kl", "KL", "o-")], None),
      ("response length (tokens)", [("response_length", "policy", "o-")], None),
      (
        "perplexity",
        [("perplexity_policy", "policy", "o-"), ("perplexity_ref", "reference", "s--")],
        None,
      ),
    ]
    if _plot_panels(
      rounds, drift, "Policy drift by round", os.path.join(workdir, "kl_by_round.png")
    ):
      plots.append(("KL, response length and perplexity by round", "kl_by_round.png"))
    rm = [
      (
        "held-out accuracy",
        [("rm_accuracy", "accuracy", "o-"), ("rm_tie_accuracy", "accuracy incl. ties", "s--")],
        (0.0, 1.02),
      ),
      ("expected calibration error", [("rm_ece", "ECE", "o-")], None),
    ]
    if _plot_panels(
      rounds, rm, "Reward model by round", os.path.join(workdir, "reward_model_by_round.png")
    ):
      plots.append(("Reward model accuracy and calibration", "reward_model_by_round.png"))
  if plots:
    lines += ["## Plots", ""]
    for caption, name in plots:
      lines += [f"### {caption}", "", f"![{caption}]({name})", ""]

  lines += ["## Samples", ""]
  if samples:
    rows = []
    for i, s in enumerate(samples):
      before, after = _number(s.get("gold_before")), _number(s.get("gold_after"))
      delta = after - before if before is not None and after is not None else None
      rows.append(
        [
          i,
          _text_cell(s.get("prompt"), max_sample_chars),
          _text_cell(s.get("before"), max_sample_chars),
          _text_cell(s.get("after"), max_sample_chars),
          _fmt(s.get("gold_before")),
          _fmt(s.get("gold_after")),
          MISSING if delta is None else f"{delta:+.4g}",
        ]
      )
    lines += [
      markdown_table(
        ["#", "prompt", "before", "after", "gold before", "gold after", "Δ gold"], rows
      ),
      "",
    ]
  else:
    lines += ["No samples.", ""]

  lines += ["## Timings", ""]
  if timings:
    rows = []
    for name, sec in timings.items():
      value = _number(sec)
      rows.append([name, _fmt(sec, ".1f"), MISSING if value is None else _fmt_duration(value)])
    lines += [markdown_table(["phase", "seconds", "h:mm:ss"], rows), ""]
  else:
    lines += ["No timings.", ""]

  lines += ["## Configuration", ""]
  if config_summary:
    lines += [
      markdown_table(["setting", "value"], [[k, _fmt(v)] for k, v in _flatten(config_summary)]),
      "",
    ]
  else:
    lines += ["No configuration summary.", ""]

  path = os.path.join(workdir, filename)
  _atomic_write_text(path, "\n".join(lines))
  return path


# ----------------------------------------------------------------------------- over-optimisation

_METHODS = {
  "bon": ("best-of-n", "bon", "R = d(α − β·d)"),
  "ppo": ("PPO", "rl", "R = d(α − β·log d)"),
}


_PEAK_EXTRAPOLATION = 2.0
"""A fitted peak further than this multiple of the largest measured d is not reported."""


def _fit_or_none(form: str, d: np.ndarray, r: np.ndarray) -> Optional[evaluation.Fit]:
  try:
    return evaluation.fit_bon(d, r) if form == "bon" else evaluation.fit_rl(d, r)
  except ValueError:
    return None


def write_overoptimization_report(
  workdir: PathLike,
  points: Sequence[Mapping[str, Any]],
  fits: Optional[Mapping[Any, Any]] = None,
  *,
  title: str = "Reward over-optimisation",
  filename: str = "overoptimization.md",
) -> str:
  """Writes ``workdir/overoptimization.md`` and ``overoptimization.png``; returns the md path.

  With ``d = √KL(π ‖ π_init)``, best-of-n follows ``R(d) = d(α − β d)`` and PPO
  ``R(d) = d(α − β log d)`` (Gao, Schulman & Hilton 2022). The plot has one panel per method
  present (best-of-n, PPO), one colour per ``n_labels`` (the reward model's training-set
  size), gold reward solid and proxy reward dashed, measured points as markers and the fitted
  curves as lines.

  Args:
    workdir: output directory (created if missing).
    points: dicts ``n_labels, method ('bon' | 'ppo'), kl, gold, proxy``; ``gold`` / ``proxy``
      relative to the initial policy (the laws pass through ``R(0) = 0``); ``proxy`` may be
      missing.
    fits: ``{(n_labels, method): {"gold": Fit, "proxy": Fit}}`` (either entry optional) or
      ``{(n_labels, method): Fit}`` for gold only. ``None``: fitted here with
      :func:`rlhf_jax.evaluation.fit_bon` / :func:`~rlhf_jax.evaluation.fit_rl`, by least
      squares on the points of each (n_labels, method); a group with fewer than two distinct
      ``d > 0`` gets no fit (``–``).
    title / filename: heading and file name of the markdown report.
  Raises:
    ValueError: a point has an unknown method or no finite ``kl`` (names its index).
  """
  workdir = os.fspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  groups: dict[tuple[Any, str], list[tuple[float, Optional[float], Optional[float]]]] = {}
  for i, p in enumerate(points):
    method = p.get("method")
    if method not in _METHODS:
      raise ValueError(f"points[{i}]: method {method!r}, expected 'bon' or 'ppo'")
    kl = _number(p.get("kl"))
    if kl is None or kl < 0:
      raise ValueError(f"points[{i}]: kl must be a finite number >= 0, got {p.get('kl')!r}")
    groups.setdefault((p.get("n_labels"), method), []).append(
      (math.sqrt(kl), _number(p.get("gold")), _number(p.get("proxy")))
    )
  keys = sorted(groups, key=lambda k: (list(_METHODS).index(k[1]), _number(k[0]) or 0.0, str(k[0])))

  fitted: dict[tuple[Any, str], dict[str, Optional[evaluation.Fit]]] = {}
  for key in keys:
    if fits is not None:
      given = fits.get(key)
      if isinstance(given, evaluation.Fit):
        fitted[key] = {"gold": given, "proxy": None}
      else:
        fitted[key] = {"gold": (given or {}).get("gold"), "proxy": (given or {}).get("proxy")}
      continue
    form = _METHODS[key[1]][1]
    entry = {}
    for col, name in ((1, "gold"), (2, "proxy")):
      pts = [(pt[0], pt[col]) for pt in groups[key] if pt[col] is not None]
      entry[name] = _fit_or_none(form, *map(np.array, zip(*pts))) if len(pts) >= 2 else None
    fitted[key] = entry

  rows = []
  for key in keys:
    n_labels, method = key
    for name in ("gold", "proxy"):
      fit = fitted[key][name]
      n_pts = sum(pt[1 if name == "gold" else 2] is not None for pt in groups[key])
      if fit is None:
        rows.append(
          [
            _fmt(n_labels),
            _METHODS[method][0],
            name,
            _METHODS[method][2],
            MISSING,
            MISSING,
            MISSING,
            MISSING,
            MISSING,
            n_pts,
          ]
        )
        continue
      d_star, r_star = evaluation.peak(fit)
      d_max = max(pt[0] for pt in groups[key])
      if math.isnan(d_star):
        peak_d, peak_r = "none", MISSING
      elif d_star > _PEAK_EXTRAPOLATION * d_max:
        peak_d, peak_r = f"beyond data (> {_PEAK_EXTRAPOLATION * d_max:.3g})", MISSING
      else:
        peak_d, peak_r = _fmt(d_star), _fmt(r_star)
      rows.append(
        [
          _fmt(n_labels),
          _METHODS[method][0],
          name,
          _METHODS[method][2],
          _fmt(fit.alpha),
          _fmt(fit.beta),
          _fmt(fit.r2, ".3f"),
          peak_d,
          peak_r,
          n_pts,
        ]
      )

  png = "overoptimization.png"
  has_plot = _plot_overoptimization(groups, keys, fitted, os.path.join(workdir, png))
  lines = [
    f"# {title}",
    "",
    "Reward relative to the initial policy against d = √KL(π ‖ π_init). Fits (Gao, "
    "Schulman & Hilton 2022): best-of-n R = d(α − β·d), PPO R = d(α − β·log d), least "
    "squares without intercept. The gold reward peaks at d* (best-of-n α/2β, PPO "
    "exp(α/β − 1)); the proxy reward keeps rising. A peak beyond twice the largest measured "
    "d is an extrapolation and is not reported; β ≤ 0 means no peak.",
    "",
    "## Fits",
    "",
    markdown_table(
      ["labels", "method", "reward", "law", "α", "β", "R²", "peak √KL", "peak reward", "points"],
      rows,
    ),
    "",
  ]
  if has_plot:
    lines += ["## Plot", "", f"![gold and proxy reward vs √KL]({png})", ""]
  point_rows = [
    [_fmt(k[0]), _METHODS[k[1]][0], _fmt(d * d), _fmt(d), _fmt(g), _fmt(pr)]
    for k in keys
    for d, g, pr in sorted(groups[k], key=lambda t: t[0])
  ]
  lines += [
    "## Points",
    "",
    markdown_table(["labels", "method", "KL", "√KL", "gold", "proxy"], point_rows),
    "",
  ]
  path = os.path.join(workdir, filename)
  _atomic_write_text(path, "\n".join(lines))
  return path


def _plot_overoptimization(groups, keys, fitted, path: str) -> bool:
  import matplotlib
  from matplotlib.lines import Line2D

  if not keys:
    return False
  methods = [m for m in _METHODS if any(k[1] == m for k in keys)]
  labels_sorted = sorted({k[0] for k in keys}, key=lambda n: (_number(n) or 0.0, str(n)))
  cmap = matplotlib.colormaps["tab10"]
  colour = {n: cmap(i % 10) for i, n in enumerate(labels_sorted)}
  fig = _new_figure(5.6 * len(methods) + 0.8, 4.6)
  axes = fig.subplots(1, len(methods), squeeze=False, sharey=True)[0]
  for ax, method in zip(axes, methods):
    for key in (k for k in keys if k[1] == method):
      pts = groups[key]
      c = colour[key[0]]
      d_max = max(pt[0] for pt in pts)
      grid = np.linspace(0.0, d_max * 1.05 if d_max > 0 else 1.0, 200)
      for col, name, marker, ls, mfc in ((1, "gold", "o", "-", c), (2, "proxy", "s", "--", "none")):
        sel = [(pt[0], pt[col]) for pt in pts if pt[col] is not None]
        if sel:
          ax.plot(*zip(*sel), marker=marker, ls="none", color=c, mfc=mfc, mew=1.5, ms=6)
        fit = fitted[key][name]
        if fit is not None:
          ax.plot(grid, evaluation.predict(fit, grid), ls=ls, color=c, lw=1.6)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_title(f"{_METHODS[method][0]}: {_METHODS[method][2]}")
    ax.set_xlabel("d = √KL(π ‖ π_init)  (√nats)")
    ax.grid(alpha=0.3)
    ax.set_xlim(left=0.0)
  axes[0].set_ylabel("reward relative to initial policy")
  handles = [
    Line2D([], [], color=colour[n], lw=4, label=f"{_fmt(n)} labels") for n in labels_sorted
  ]
  handles += [
    Line2D([], [], color="black", ls="-", marker="o", label="gold (fit solid)"),
    Line2D([], [], color="black", ls="--", marker="s", mfc="none", label="proxy (fit dashed)"),
  ]
  fig.legend(handles=handles, fontsize=8, loc="outside right upper")
  fig.suptitle("Reward over-optimisation: gold vs proxy reward")
  _save_png(fig, path)
  return True


# ----------------------------------------------------------------------------- the assistant task


def _quote(text: str) -> List[str]:
  """``text`` as Markdown blockquote lines (blank lines kept inside the quote)."""
  return [f"> {line}".rstrip() for line in str(text).strip().splitlines() or [""]]


def chat_transcript(turns: Sequence[Tuple[str, str]]) -> List[str]:
  """A conversation as Markdown lines: one blockquote, each turn a bold role name then its
  text (``turns``: ``(role, text)`` pairs such as ``("user", ...), ("assistant", ...)``); an
  empty turn reads *(empty)*."""
  lines: List[str] = []
  for i, (role, text) in enumerate(turns):
    if i:
      lines.append(">")
    body = _quote(text if str(text).strip() else "*(empty)*")
    lines.append(f"> **{role.capitalize()}:** {body[0][2:]}")
    lines += body[1:]
  return lines


def _rate_cell(ev: Mapping[str, Any], key: str) -> str:
  rate = _number(ev.get(key))
  if rate is None:
    return MISSING
  lo, hi = _number(ev.get(key + "_lo")), _number(ev.get(key + "_hi"))
  return f"{rate:.2f} [{_fmt(lo, '.2f')}, {_fmt(hi, '.2f')}]"


def plot_pass_rates(
  ev: Mapping[str, Any],
  categories: Sequence[str],
  path: str,
  sft: Optional[Mapping[str, Any]] = None,
) -> bool:
  """Grouped bars: per category (and false-premise agreement, lower is better) the pass rate
  of the starting model, the supervised model (with ``sft``) and the policy, with their 95%
  intervals. False when ``ev`` has no pass rates."""
  rows = [(c, f"pass_{c}") for c in categories if _number(ev.get(f"pass_{c}_before")) is not None]
  if _number(ev.get("false_premise_agreement_before")) is not None:
    rows.append(("false-premise\nagreement (lower\nis better)", "false_premise_agreement"))
  if not rows:
    return False
  sides = [("starting model", ev, "_before", "tab:gray")]
  if sft is not None:
    sides.append(("after SFT", sft, "_after", "tab:orange"))
  sides.append(("after RL", ev, "_after", "tab:blue"))
  fig = _new_figure(max(6.0, 1.2 * len(rows) + 2.0), 4.2)
  ax = fig.add_subplot()
  x = np.arange(len(rows))
  width = 0.8 / len(sides)
  for j, (label, src, suffix, colour) in enumerate(sides):
    rate = np.array([_number(src.get(k + suffix)) or 0.0 for _, k in rows])
    lo = np.array([_number(src.get(k + suffix + "_lo")) for _, k in rows], dtype=float)
    hi = np.array([_number(src.get(k + suffix + "_hi")) for _, k in rows], dtype=float)
    xs = x + (j - (len(sides) - 1) / 2) * width
    ax.bar(xs, rate, width=width, color=colour, alpha=0.85, label=label)
    ok = ~(np.isnan(lo) | np.isnan(hi))
    if ok.any():
      err = [np.maximum(rate - lo, 0)[ok], np.maximum(hi - rate, 0)[ok]]
      ax.errorbar(xs[ok], rate[ok], yerr=err, fmt="none", ecolor="black", capsize=3, lw=1)
  ax.set_xticks(x, [name for name, _ in rows], fontsize=8)
  ax.set_ylim(0.0, 1.05)
  ax.set_ylabel("share of held-out answers")
  k = int(ev.get("answers_per_prompt", 1))
  ax.set_title(
    "Pass rate by category (95% intervals" + (f", {k} answers a prompt)" if k > 1 else ")")
  )
  ax.grid(axis="y", alpha=0.3)
  fig.legend(loc="outside lower center", ncols=len(sides), fontsize=8)
  _save_png(fig, path)
  return True


def _change_cell(ev: Mapping[str, Any], key: str) -> str:
  """A signed change with its interval ("" when the evaluation has none)."""
  d = _number(ev.get(key))
  if d is None:
    return ""
  lo, hi = _number(ev.get(key + "_lo")), _number(ev.get(key + "_hi"))
  return f"{d:+.2f} [{_fmt(lo, '+.2f')}, {_fmt(hi, '+.2f')}]"


def assistant_section(
  ev: Mapping[str, Any],
  categories: Sequence[str],
  samples: Sequence[Mapping[str, Any]],
  sft: Optional[Mapping[str, Any]] = None,
  sft_info: Optional[Mapping[str, Any]] = None,
  workdir: Optional[str] = None,
) -> List[str]:
  """The assistant task's results as Markdown lines: per category the pass rate before (the
  starting model) and after (the policy) with Wilson 95% intervals (keys
  ``pass_<category>_before``, ``..._after`` and their ``_lo`` / ``_hi``), the false-premise
  agreement rate (``false_premise_agreement_before`` / ``_after``), and for each sample (dicts
  ``category, user, before, after, gold_before, gold_after``) the conversation before and
  after, as chat. With ``sft`` (the supervised stage's evaluation, the same keys with its
  model as "after" and its ``samples``) a column and a transcript for the model after the
  supervised stage, and ``sft_info`` (its ``DONE`` record) the demonstrations per category.
  With ``workdir``, the pass rates also as a plot there (:func:`plot_pass_rates`,
  ``pass_rates_by_category.png``)."""
  sft_cols = ["after SFT", "SFT win rate"] if sft is not None else []

  def sft_cells(key: str, win_key: Optional[str]) -> List[str]:
    if sft is None:
      return []
    return [_rate_cell(sft, key) if key else "", _fmt(sft.get(win_key), ".2f") if win_key else ""]

  rows = [
    [
      c,
      ev.get(f"pass_{c}_n", MISSING),
      _rate_cell(ev, f"pass_{c}_before"),
      *sft_cells(f"pass_{c}_after", f"win_rate_{c}"),
      _rate_cell(ev, f"pass_{c}_after"),
      _change_cell(ev, f"pass_{c}_change"),
      _fmt(ev.get(f"win_rate_{c}"), ".2f"),
      _fmt(ev.get(f"win_rate_ceiling_{c}"), ".2f"),
    ]
    for c in categories
  ]
  rows.append(
    [
      "all",
      "",
      "",
      *sft_cells("", "win_rate"),
      "",
      "",
      _fmt(ev.get("win_rate"), ".2f"),
      _fmt(ev.get("win_rate_ceiling"), ".2f"),
    ]
  )
  rows.append(
    [
      "false-premise agreement (lower is better)",
      ev.get("false_premise_n", MISSING),
      _rate_cell(ev, "false_premise_agreement_before"),
      *sft_cells("false_premise_agreement_after", None),
      _rate_cell(ev, "false_premise_agreement_after"),
      _change_cell(ev, "false_premise_agreement_change"),
      "",
      "",
    ]
  )
  header = ["category", "prompts", "before", *sft_cols, "after", "change", "win rate", "ceiling"]
  k = int(ev.get("answers_per_prompt", 1))
  lines = [
    "## The assistant task, per category",
    "",
    "Pass: every check of the category passed (gold score 1) on the held-out prompts; "
    "before = the starting model, after = the last round's policy; 95% Wilson "
    "intervals"
    + (
      f" ({k} answers to each prompt, the share over all answers; the intervals count "
      "prompts, not answers)"
      if k > 1
      else ""
    )
    + "; change: after − before, paired by prompt, with a 95% t interval over prompts. "
    "False-premise agreement: share of responses to premise prompts with a false "
    "claim that side with the user. Win rate: the policy against the starting model under "
    "the gold judge, ties counting half; ceiling: the win rate of a policy that passed every "
    "check (it wins where the starting model scored below 1 and ties where it scored 1), the "
    "most any policy can reach against it.",
    "",
  ]
  if sft is not None:
    lines += [
      "After SFT: the model after the supervised stage on demonstrations (the reference of "
      "the RL stage, which measures its KL against it); SFT win rate: that model against the "
      "starting model, before any RL.",
      "",
    ]
  lines += [markdown_table(header, rows), ""]
  png = "pass_rates_by_category.png"
  if workdir is not None and plot_pass_rates(ev, categories, os.path.join(workdir, png), sft):
    lines += [f"![pass rate by category]({png})", ""]
  if ev.get("rm_prefers_decline_harmful_n") or ev.get("rm_prefers_answer_benign_n"):
    lines += [
      "Does the reward model know when to decline? On held-out prompts where the starting "
      "model's answer does not decline, it scores that answer against a decline: it prefers "
      f"the decline on {_rate_cell(ev, 'rm_prefers_decline_harmful')} of "
      f"{ev.get('rm_prefers_decline_harmful_n', 0)} harmful requests (right) and the answer "
      f"on {_rate_cell(ev, 'rm_prefers_answer_benign')} of "
      f"{ev.get('rm_prefers_answer_benign_n', 0)} benign look-alikes (right). A reward model "
      "that learned only that declining pays gets the first right and the second wrong."
      + (
        f" Discrimination (the two shares' sum minus 1, Youden's J; 0: its preference for "
        f"declining ignores whether the request is harmful, 1: right on every prompt): "
        f"{ev['rm_refusal_discrimination']:+.2f}."
        if ev.get("rm_refusal_discrimination") is not None
        else ""
      ),
      "",
    ]
  if ev.get("rm_prefers_agreement_false_n") or ev.get("rm_prefers_agreement_true_n"):
    lines += [
      "Does the reward model side with the user? On held-out premise prompts it scores "
      '"Yes, that\'s right: <claim>." against "No, that\'s not right: <corrected claim>.": '
      f"it prefers agreeing on {_rate_cell(ev, 'rm_prefers_agreement_false')} of "
      f"{ev.get('rm_prefers_agreement_false_n', 0)} false claims (wrong) and on "
      f"{_rate_cell(ev, 'rm_prefers_agreement_true')} of "
      f"{ev.get('rm_prefers_agreement_true_n', 0)} true ones (right).",
      "",
    ]
  if sft_info:
    by_cat = sft_info.get("by_category", {})
    demo_rows = [
      [c, d.get("prompts", 0), d.get("sample", 0), d.get("revision", 0)]
      for c, d in ((c, by_cat.get(c, {})) for c in categories)
    ]
    lines += [
      "### Demonstrations",
      "",
      f"{sft_info.get('demonstrations', MISSING)} demonstrations for the supervised stage "
      f"({sft_info.get('too_long', 0)} more left out as longer than the response budget): the "
      "base's own answer where it passed every check, else its rule-based revision "
      "(`rlhf_jax.feedback.demonstrations`; all of them in `sft/demonstrations.jsonl`).",
      "",
      markdown_table(["category", "training prompts", "own answer", "revision"], demo_rows),
      "",
    ]
  lines += ["## Transcripts", ""]
  sft_samples = {s.get("user"): s for s in (sft or {}).get("samples", [])}
  if not samples:
    return lines + ["No transcripts.", ""]
  for c in categories:
    mine = [s for s in samples if s.get("category") == c]
    if not mine:
      continue
    lines += [f"### {c}", ""]
    for s in mine:
      for label, key in (("Before (starting model)", "before"), ("After (policy)", "after")):
        gold = _fmt(s.get(f"gold_{key}"), ".2f")
        lines += [f"**{label}**, gold {gold}:", ""]
        lines += chat_transcript([("user", s.get("user", "")), ("assistant", s.get(key, ""))])
        lines.append("")
        if key == "before" and s.get("user") in sft_samples:
          sft_s = sft_samples[s.get("user")]
          lines += [f"**After SFT** (before RL), gold {_fmt(sft_s.get('gold_after'), '.2f')}:", ""]
          turns = [("user", s.get("user", "")), ("assistant", sft_s.get("after", ""))]
          lines += chat_transcript(turns)
          lines.append("")
  return lines
