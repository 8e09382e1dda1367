"""Summarise the latest benchmark records as a markdown table and a plot.

Reads ``bench/results/{ppo,reward,ceiling,grpo,dpo}.jsonl`` (as appended by ``bench/ppo.py``,
``bench/reward.py``, ``bench/ceiling.py``, ``bench/grpo.py`` and ``bench/dpo.py``) and writes ``summary.md`` and ``summary.png``
next to them. For each variant the newest record wins. A peer's GFLOP/s is computed with
the same model-FLOP count as ours, against the matmul peak measured in the peer's own
invocation (the record before it in the file).

  python bench/report.py [--results bench/results]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ppo import model_cfg, update_flops  # noqa: E402  (the FLOP count the benchmark uses)


def _records(path):
  """Records of a JSONL file in order, each with the f32 peak of its invocation attached."""
  out, peak, invocation = [], None, None
  if not os.path.exists(path):
    return out
  with open(path) as f:
    for lineno, line in enumerate(f, 1):
      line = line.strip()
      if not line:
        continue
      try:
        rec = json.loads(line)
      except json.JSONDecodeError as e:
        raise SystemExit(f"{path}:{lineno}: not JSON ({e})") from None
      if rec.get("tag") == "matmul_peak_f32":  # every invocation starts with its peak
        peak, invocation = rec, (path, lineno)
      rec["_invocation"] = invocation
      rec["_peak"] = peak["gflops_best"] if peak else None
      rec["_cpu"] = (peak or {}).get("info", {}).get("cpu", {})
      out.append(rec)
  return out


def _latest(records, tag, **match):
  found = None
  for r in records:
    if r.get("tag") == tag and all(r.get(k) == v for k, v in match.items()):
      found = r
  return found


def ppo_rows(records):
  """One row per variant and peer for GPT-2 small (float32 unless stated)."""
  rows = []
  trl = _latest(records, "peer_ppo_trl112", size="small")
  tunix = _latest(records, "peer_ppo_tunix", size="small")
  flops = update_flops(model_cfg("small", "float32", False, "lm"), 64, 32, 32, 4, False)
  for label, match in (
    ("rlhf_jax, separate value model", dict(dtype="float32", shared_trunk=False)),
    ("rlhf_jax, value head on the policy trunk", dict(dtype="float32", shared_trunk=True)),
    ("rlhf_jax, bfloat16 compute", dict(dtype="bfloat16", shared_trunk=False)),
  ):
    r = _latest(records, "ppo_rlhf_jax", size="small", **match)
    if r:
      rows.append(
        dict(
          name=label,
          samples_per_s=r["samples_per_s_median"],
          rollout_s=r["rollout_phase_s"]["median"],
          update_s=r["update_phase_s"]["median"],
          update_gflops=r["update_gflops_median"],
          fraction=r["update_fraction_of_peak"],
          peak=r["_peak"],
          invocation=r["_invocation"],
        )
      )

  def peer(name, rec, update_s):
    gflops = flops / update_s / 1e9 if update_s else None
    return dict(
      name=name,
      samples_per_s=rec["samples_per_s_median"],
      rollout_s=None,
      update_s=update_s,
      update_gflops=gflops,
      peak=rec["_peak"],
      fraction=gflops / rec["_peak"] if gflops and rec["_peak"] else None,
      invocation=rec["_invocation"],
    )

  if trl:
    rows.append(peer("TRL 1.12 PPOTrainer", trl, trl.get("train_rest_s_median")))
  if tunix:
    br = tunix.get("breakdown_median_s", {})
    rows.append(
      peer(
        "Tunix PPOLearner (Qwen3, same matmul FLOPs)",
        tunix,
        br.get("update_actor", 0) + br.get("update_critic", 0) or None,
      )
    )

  def ratio(row, rec):  # only against a peer timed in the same invocation (same host, hour)
    if not rec or row["invocation"] != rec["_invocation"]:
      return None
    return row["samples_per_s"] / rec["samples_per_s_median"]

  for row in rows:
    row["vs_trl"] = ratio(row, trl)
    row["vs_tunix"] = ratio(row, tunix)
  return rows


def _fmt(x, spec):
  return "–" if x is None else format(x, spec)


def _ratio(x):
  return "–" if x is None else f"{x:.2f}x"


def _host(rec):
  """``family F model M, load1 L``: the host and its 1-min load average when ``rec`` ran."""
  info = rec.get("info", {})
  cpu = info.get("cpu") or rec.get("_cpu", {})
  load = info.get("loadavg") or rec.get("loadavg")
  return (
    f"family {cpu.get('cpu family', '?')} model {cpu.get('model', '?')}, "
    f"load1 {_fmt(load[0] if load else None, '.1f')}"
  )


def critic_free_lines(records):
  """GRPO / RLOO iteration rows (``bench/grpo.py``): ours next to TRL 1.16, same invocation."""
  lines = [
    "## Critic-free iteration, GPT-2 small (32 prompts x 2 samples, 32 + 32 tokens, "
    "4 epochs x 4 minibatches of 16)",
    "",
    "| algorithm | rlhf_jax samples/s | TRL 1.16 samples/s | ratio | rollout s | update s | "
    "update GFLOP/s | of f32 peak | host, load (ours / TRL) |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  found = False
  for algo in ("grpo", "rloo"):
    ours = _latest(records, "grpo_rlhf_jax", algo=algo, size="small")
    if not ours:
      continue
    found = True
    trl = _latest(records, "peer_rl_trl116", algo=algo, size="small")
    o = ours["samples_per_s_median"]
    t = trl["samples_per_s_median"] if trl else None
    lines.append(
      f"| {algo.upper()} | {o:.2f} | {_fmt(t, '.2f')} | "
      f"{_fmt(None if t is None else o / t, '.2f')}x | {ours['rollout_phase_s']['median']:.2f} | "
      f"{ours['update_phase_s']['median']:.2f} | {ours['update_gflops_median']:.0f} | "
      f"{100 * ours['update_fraction_of_peak']:.0f}% of {ours['_peak']:.0f} | {_host(ours)} / "
      f"{'–' if not trl else _fmt(trl['loadavg'][0], '.1f')} |"
    )
  if not found:
    return []
  return lines + [
    "",
    "samples/s = sampled completions per second of whole iterations, the first excluded. "
    "Both sides: Adam lr 1e-5, beta 0.05 with a reference model (GRPO: k3 loss term, token "
    "mean; RLOO: k1 reward penalty), a GPT-2 scalar reward model, no stop token. Rollout and "
    "update are our iteration's two halves timed separately. The f32 matmul peak is measured "
    "once at the start of the invocation; the load changes during a run (other jobs on the "
    "same cores), so a share above 100% means the peak was taken under more load than the row.",
    "",
  ]


def dpo_lines(records):
  """DPO step rows (``bench/dpo.py``): ours next to TRL 1.16 ``DPOTrainer``, same invocation."""
  lines = [
    "## DPO training, GPT-2 small (32 pairs per step, 32-token prompt + 32-token responses)",
    "",
    "| reference log-probs | rlhf_jax pairs/s | TRL 1.16 pairs/s | ratio | one-off reference "
    "pass s (ours / TRL) | step GFLOP/s | of f32 peak | host, load (ours / TRL) |",
    "|---|---|---|---|---|---|---|---|",
  ]
  found = None
  for ref in ("precompute", "live"):
    ours = _latest(records, "dpo_rlhf_jax", ref=ref, size="small")
    if not ours:
      continue
    found = ours
    trl = _latest(records, "peer_dpo_trl", ref=ref, size="small")
    o = ours["pairs_per_s_median"]
    t = trl["pairs_per_s_median"] if trl else None
    pre = "–"
    if ref == "precompute":
      pre = f"{_fmt(ours['ref_precompute_s'], '.1f')} / {_fmt((trl or {}).get('ref_precompute_s'), '.1f')}"
    label = "precomputed once" if ref == "precompute" else "reference forward in every step"
    lines.append(
      f"| {label} | {o:.1f} | {_fmt(t, '.1f')} | {_fmt(None if t is None else o / t, '.2f')}x "
      f"| {pre} | {ours['gflops_median']:.0f} | {100 * ours['fraction_of_peak']:.0f}% of "
      f"{ours['_peak']:.0f} | "
      f"{_host(ours)} / {'–' if not trl else _fmt(trl['loadavg'][0], '.1f')} |"
    )
  if not found:
    return []
  return lines + [
    "",
    "pairs/s = 32 / median step time (first two steps excluded on both sides). Sigmoid loss, "
    f"beta {found['beta']}, Adam lr 1e-5, float32. The one-off reference pass (over all "
    f"{found['train_pairs']} pairs of the run; ours includes its compilation) is not part of "
    "the step time.",
    "",
  ]


def render(results):
  ppo = _records(os.path.join(results, "ppo.jsonl"))
  reward = _records(os.path.join(results, "reward.jsonl"))
  ceiling = _records(os.path.join(results, "ceiling.jsonl"))
  lines = [
    "# Benchmarks: latest records",
    "",
    "Generated by `python bench/report.py` from `bench/results/*.jsonl`; rerun the "
    "benchmarks with the commands in each script's docstring.",
    "",
  ]
  rows = ppo_rows(ppo)
  ceil_ppo = _latest(ceiling, "ceiling_ppo_update", size="small")
  cpu = next((r["_cpu"] for r in reversed(ppo) if r.get("_cpu")), {})
  if cpu:
    lines += [
      f"Host CPU: {cpu.get('model name', '?')}, family {cpu.get('cpu family', '?')} "
      f"model {cpu.get('model', '?')}.",
      "",
    ]
  torch_peak = _latest(ceiling, "peer_matmul_peak_torch")
  if torch_peak:
    lines += [
      f"f32 GEMM 2048^3 on this host, same invocation: XLA {torch_peak['_peak']:.0f} "
      f"GFLOP/s, PyTorch {torch_peak['gflops_best']:.0f} GFLOP/s (bench/ceiling.py).",
      "",
    ]
  lines += [
    "## PPO iteration, GPT-2 small (64 prompts x 32, 32 new tokens, 4 epochs x 4 minibatches)",
    "",
    "| implementation | samples/s | vs TRL | vs Tunix | rollout s | update s | "
    "update GFLOP/s | of f32 peak |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(
      f"| {r['name']} | {r['samples_per_s']:.2f} | {_ratio(r['vs_trl'])} | "
      f"{_ratio(r['vs_tunix'])} | {_fmt(r['rollout_s'], '.2f')} | "
      f"{_fmt(r['update_s'], '.2f')} | {_fmt(r['update_gflops'], '.0f')} | "
      f"{_fmt(None if r['fraction'] is None else 100 * r['fraction'], '.0f')}% |"
    )
  if ceil_ppo:
    lines.append(
      f"| matmul-only ceiling, separate value model (bench/ceiling.py) | – | – | – | – | "
      f"{ceil_ppo['update_phase_ceiling_s']:.2f} | {ceil_ppo['ceiling_gflops']:.0f} | "
      f"{100 * ceil_ppo['ceiling_fraction_of_peak']:.0f}% |"
    )
  lines += [
    "",
    "A ratio compares rows timed in one invocation; the bfloat16 and shared-trunk "
    "variants run with `--no-peers`, in other invocations (other hours, possibly other "
    "hosts), so their ratio is '–' and their own record in `ppo.jsonl` says where they "
    "ran. TRL's update time is its "
    "iteration minus generation and scoring (GAE included); Tunix's is its actor plus "
    "critic update time. GFLOP/s count model FLOPs only (6 x matmul params x tokens + "
    "attention, LM head on response positions), the same count for every row.",
    "",
  ]

  lines += [
    "## Reward-model training (32 pairs x 64 tokens)",
    "",
    "| size | rlhf_jax pairs/s | TRL pairs/s | ratio | matmul-only ceiling pairs/s | "
    "rlhf_jax / ceiling |",
    "|---|---|---|---|---|---|",
  ]
  reward_rows = []
  for size in ("small", "medium"):
    ours = _latest(reward, "reward_rlhf_jax", size=size, dtype="float32")
    trl = _latest(reward, "peer_reward_trl", size=size)
    ceil = _latest(ceiling, "ceiling_reward_step", size=size)
    if not ours:
      continue
    o = ours["pairs_per_s_median"]
    t = trl["pairs_per_s_median"] if trl else None
    c = ceil["ceiling_pairs_per_s"] if ceil else None
    reward_rows.append((size, o, t, c))
    lines.append(
      f"| {size} | {o:.1f} | {_fmt(t, '.1f')} | "
      f"{_fmt(None if t is None else o / t, '.2f')}x | {_fmt(c, '.1f')} | "
      f"{_fmt(None if c is None else o / c, '.2f')} |"
    )
  lines.append("")
  lines += critic_free_lines(_records(os.path.join(results, "grpo.jsonl")))
  lines += dpo_lines(_records(os.path.join(results, "dpo.jsonl")))
  return "\n".join(lines), rows, ceil_ppo, reward_rows


def plot(path, rows, ceil_ppo, reward_rows):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(13, 4.2))
  FigureCanvasAgg(fig)
  ax1, ax2, ax3 = fig.subplots(1, 3)
  short = {
    "rlhf_jax, separate value model": "ours",
    "rlhf_jax, value head on the policy trunk": "ours\nshared trunk",
    "rlhf_jax, bfloat16 compute": "ours\nbf16",
    "TRL 1.12 PPOTrainer": "TRL",
    "Tunix PPOLearner (Qwen3, same matmul FLOPs)": "Tunix",
  }
  names = [short.get(r["name"], r["name"]) for r in rows]
  colors = ["tab:blue" if n.startswith("ours") else "tab:gray" for n in names]
  ax1.bar(names, [r["samples_per_s"] for r in rows], color=colors)
  trl = next((r["samples_per_s"] for r in rows if r["name"].startswith("TRL")), None)
  if trl:
    ax1.axhline(1.7 * trl, color="k", ls="--", lw=1, label="goal: 1.7x TRL")
    ax1.legend(fontsize=8)
  ax1.set_title("PPO iteration, GPT-2 small")
  ax1.set_ylabel("samples/s")
  upd = [
    (n, r["update_gflops"], c)
    for n, r, c in zip(names, rows, colors)
    if r["update_gflops"] is not None
  ]
  if ceil_ppo:
    upd.append(("matmul-only\nceiling", ceil_ppo["ceiling_gflops"], "tab:green"))
  ax2.bar([u[0] for u in upd], [u[1] for u in upd], color=[u[2] for u in upd])
  peak = next((r["peak"] for r in rows if r["peak"]), None)
  if peak:
    ax2.axhline(peak, color="k", lw=1, label=f"f32 matmul peak {peak:.0f}")
    ax2.axhline(0.8 * peak, color="k", lw=1, ls="--", label="80% of peak")
    ax2.legend(fontsize=8, loc="lower right")
  ax2.set_title("PPO update phase")
  ax2.set_ylabel("model GFLOP/s")
  for ax in (ax1, ax2):
    ax.tick_params(axis="x", labelsize=8)
  if reward_rows:
    import numpy as np

    x = np.arange(len(reward_rows))
    w = 0.27
    ax3.bar(x - w, [r[2] or 0 for r in reward_rows], w, label="TRL", color="tab:gray")
    ax3.bar(x, [r[1] for r in reward_rows], w, label="ours", color="tab:blue")
    ax3.bar(
      x + w, [r[3] or 0 for r in reward_rows], w, label="matmul-only ceiling", color="tab:green"
    )
    for i, r in enumerate(reward_rows):
      if r[2]:
        ax3.hlines(
          1.5 * r[2],
          i - 1.5 * w,
          i + 1.5 * w,
          color="k",
          ls="--",
          label="goal: 1.5x TRL" if i == 0 else None,
        )
    ax3.set_xticks(x, [r[0] for r in reward_rows])
    ax3.set_yscale("log")
    ax3.set_ylabel("pairs/s (log)")
    ax3.set_title("Reward-model training")
    ax3.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument(
    "--results", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
  )
  args = ap.parse_args()
  text, rows, ceil_ppo, reward_rows = render(args.results)
  with open(os.path.join(args.results, "summary.md"), "w") as f:
    f.write(text)
  plot(os.path.join(args.results, "summary.png"), rows, ceil_ppo, reward_rows)
  print(text)


if __name__ == "__main__":
  main()
