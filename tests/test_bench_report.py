"""bench/report.py: the summary table reads the newest records and computes ratios right."""

import importlib.util
import json
import os
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench")


@pytest.fixture()
def report():
  sys.path.insert(0, BENCH)
  try:
    spec = importlib.util.spec_from_file_location("bench_report", os.path.join(BENCH, "report.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
  finally:
    sys.path.remove(BENCH)


def _write(path, records):
  with open(path, "w") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")


def _append(path, records):
  with open(path, "a") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")


def _ours(sps, upd_s, frac, dtype="float32", **kw):
  return dict(
    tag="ppo_rlhf_jax",
    size="small",
    dtype=dtype,
    shared_trunk=False,
    samples_per_s_median=sps,
    rollout_phase_s={"median": 1.0},
    update_phase_s={"median": upd_s},
    update_gflops_median=100.0,
    update_fraction_of_peak=frac,
    **kw,
  )


def test_newest_record_wins_and_ratios(tmp_path, report):
  peak = lambda g: dict(tag="matmul_peak_f32", gflops_best=g, info={"cpu": {"model name": "X"}})
  _write(
    tmp_path / "ppo.jsonl",
    [
      peak(100.0),
      _ours(5.0, 9.0, 0.3),
      dict(tag="peer_ppo_trl112", size="small", samples_per_s_median=4.0, train_rest_s_median=8.0),
      peak(200.0),
      _ours(8.0, 6.0, 0.6),
      dict(tag="peer_ppo_trl112", size="small", samples_per_s_median=5.0, train_rest_s_median=10.0),
      dict(
        tag="peer_ppo_tunix",
        size="small",
        samples_per_s_median=4.0,
        breakdown_median_s={"update_actor": 6.0, "update_critic": 4.0},
      ),
    ],
  )
  _write(
    tmp_path / "reward.jsonl",
    [
      peak(200.0),
      dict(tag="reward_rlhf_jax", size="small", dtype="float32", pairs_per_s_median=30.0),
      dict(tag="peer_reward_trl", size="small", pairs_per_s_median=40.0),
    ],
  )
  _write(
    tmp_path / "ceiling.jsonl",
    [peak(200.0), dict(tag="ceiling_reward_step", size="small", ceiling_pairs_per_s=60.0)],
  )
  _append(tmp_path / "ppo.jsonl", [peak(50.0), _ours(20.0, 3.0, 0.7, dtype="bfloat16")])
  text, rows, _, reward_rows = report.render(str(tmp_path))
  # A variant timed in another invocation (no peers in it) gets no ratio to these peers.
  bf16 = next(r for r in rows if "bfloat16" in r["name"])
  assert bf16["samples_per_s"] == 20.0 and bf16["vs_trl"] is None and bf16["vs_tunix"] is None
  ours = rows[0]
  assert ours["samples_per_s"] == 8.0  # the newer of the two records
  assert ours["vs_trl"] == pytest.approx(8.0 / 5.0)
  assert ours["vs_tunix"] == pytest.approx(8.0 / 4.0)
  trl = next(r for r in rows if r["name"].startswith("TRL"))
  # Same FLOP count as ours, against the peak measured in TRL's own invocation (200).
  from ppo import model_cfg, update_flops

  flops = update_flops(model_cfg("small", "float32", False, "lm"), 64, 32, 32, 4, False)
  assert trl["update_gflops"] == pytest.approx(flops / 10.0 / 1e9)
  assert trl["fraction"] == pytest.approx(flops / 10.0 / 1e9 / 200.0)
  tunix = next(r for r in rows if r["name"].startswith("Tunix"))
  assert tunix["update_s"] == pytest.approx(10.0)
  assert reward_rows == [("small", 30.0, 40.0, 60.0)]
  assert "| small | 30.0 | 40.0 | 0.75x | 60.0 | 0.50 |" in text


def test_bad_line_names_file_and_line(tmp_path, report):
  (tmp_path / "ppo.jsonl").write_text('{"tag": "matmul_peak_f32", "gflops_best": 1}\n{oops\n')
  with pytest.raises(SystemExit, match=r"ppo\.jsonl:2"):
    report.render(str(tmp_path))
