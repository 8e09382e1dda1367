"""The studies built on the pipeline (over-optimisation, compare, sycophancy) across processes:
process 0 alone writes their files and calls their scorers, and both processes meet at the
same collectives in the same order.

Two processes are simulated in one: the run as process 0 of 2 records every payload it
broadcasts (``rlhf_jax.distributed._broadcast_bytes``), then the run as process 1 of 2
receives them in order, each under the same collective name, and must write nothing. The
heavy stages (data, models, training, sampling) are replaced by small fakes; what is tested
is the studies' own code around them.
"""

import dataclasses
import json
import pathlib
import pickle
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from rlhf_jax import distributed


class TwoProcesses:
  """Runs a function as process 0, then as process 1, of a simulated pair."""

  def __init__(self, monkeypatch):
    self.mp = monkeypatch
    self.sent = []  # (collective name, payload) in process 0's order

  def run_as(self, index: int, fn):
    received = iter(self.sent)

    def broadcast(payload: bytes, name: str) -> bytes:
      if index == 0:
        self.sent.append((name, payload))
        return payload
      lead_name, lead_payload = next(received, (None, None))
      assert name == lead_name, f"process 1 reached {name!r}, process 0 {lead_name!r}"
      return lead_payload

    with self.mp.context() as m:
      m.setattr(jax, "process_count", lambda: 2)
      m.setattr(jax, "process_index", lambda: index)
      m.setattr(distributed, "_broadcast_bytes", broadcast)
      out = fn()
    if index == 1:
      assert next(received, None) is None, "process 1 skipped collectives of process 0"
    return out

  def names(self):
    return [name for name, _ in self.sent]

  def value(self, name):
    ok, value = pickle.loads(dict(self.sent)[name])
    assert ok
    return value


def _files(root: pathlib.Path):
  return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def _eval(rnd: int) -> dict:
  return {
    "round": rnd,
    "kl": 1.0,
    "gold_reward_mean": 0.2,
    "gold_reward_ref_mean": 0.1,
    "win_rate": 0.6,
    "ppo_seconds": 1.0,
    "round_seconds": 2.0,
    "false_premise_agreement_after": 0.3,
    "false_premise_agreement_before": 0.4,
  }


def test_compare_writes_on_process_zero_only(tmp_path, monkeypatch):
  from rlhf_jax.train import compare
  from rlhf_jax.train import pipeline as pl

  one = pl.Config(rounds=1)
  arms = {"a": one, "b": one}  # equal round-1 inputs: b shares a's round 1
  monkeypatch.setattr(compare, "check_config", lambda cfg: None)
  monkeypatch.setattr(compare, "arm_configs", lambda cfg: arms)
  monkeypatch.setattr(compare, "_shared_base", lambda cfg, arms, root: (str(root), "/base"))
  runs = []

  def fake_run(cfg, rdir):  # the pipeline: lead-aware itself; here process 0's files only
    runs.append((pathlib.Path(rdir).name, (pathlib.Path(rdir) / "round_1/pairs.npz").exists()))
    if jax.process_index() == 0:
      r1 = pathlib.Path(rdir) / "round_1"
      r1.mkdir(exist_ok=True)
      (r1 / "eval.json").write_text(json.dumps(_eval(1)))
      (r1 / "pairs.npz").write_bytes(b"x")
      (r1 / "DONE").write_text("{}")

  monkeypatch.setattr(pl, "run", fake_run)
  cfg = compare.Config(arms=("a=x.py", "b=x.py"), seeds=(0,))
  procs = TwoProcesses(monkeypatch)
  lead, other = tmp_path / "p0", tmp_path / "p1"
  procs.run_as(0, lambda: compare.run(cfg, str(lead)))
  procs.run_as(1, lambda: compare.run(cfg, str(other)))
  assert _files(other) == []  # process 1 ran both arms and wrote nothing
  # both processes ran both arms; b found a's round 1 (copied by process 0) when it started
  assert runs == [("a_s0", False), ("b_s0", True), ("a_s0", False), ("b_s0", False)]
  assert procs.names() == [
    "a_s0: finished?",
    "a_s0: run folder",
    "a_s0: wall time",
    "b_s0: finished?",
    "b_s0: run folder",
    "b_s0: round 1 from a_s0",
    "b_s0: wall time",
    "compare: results",
  ]
  assert procs.value("b_s0: round 1 from a_s0") is True
  got = _files(lead)
  for f in ("runs/a_s0/config.json", "runs/a_s0/wall_seconds.json", "runs/b_s0/data"):
    assert f in got
  rows = json.loads((lead / "results" / "rows.json").read_text())
  assert [(r["algorithm"], r["round"], r["kl"]) for r in rows] == [("a", 1, 1.0), ("b", 1, 1.0)]
  # run again, the finished study only rereads its runs; an arm whose config changed reruns
  runs.clear()
  procs.run_as(0, lambda: compare.run(cfg, str(lead)))
  assert runs == []
  arms["b"] = dataclasses.replace(one, max_skipped_fraction=0.5)
  procs.run_as(0, lambda: compare.run(cfg, str(lead)))
  assert runs == [("b_s0", True)]


def test_sycophancy_study_is_written_by_process_zero_only(tmp_path, monkeypatch):
  from rlhf_jax.train import compare, sycophancy

  cfg = sycophancy.Config(biases=(0.0, 1.0), kl_coefs=(0.1,), seeds=(0,))
  runs = {}
  for (b, k), arm in zip(sycophancy.arm_specs(cfg).values(), ("bias0_kl0.1", "bias1_kl0.1")):
    rdir = tmp_path / "runs" / arm
    (rdir / "round_1").mkdir(parents=True)
    (rdir / "round_1" / "eval.json").write_text(json.dumps(dict(_eval(1), kl=b + k)))
    runs[(arm, 0)] = rdir
  monkeypatch.setattr(sycophancy, "check_config", lambda cfg: None)
  monkeypatch.setattr(compare, "run_arms", lambda cfg, workdir: ({}, runs))
  procs = TwoProcesses(monkeypatch)
  procs.run_as(0, lambda: sycophancy.run(cfg, str(tmp_path / "p0")))
  procs.run_as(1, lambda: sycophancy.run(cfg, str(tmp_path / "p1")))
  assert _files(tmp_path / "p1") == []
  assert procs.names() == ["sycophancy: study"]
  rows = json.loads((tmp_path / "p0" / "results" / "rows.json").read_text())
  assert [(r["bias"], r["kl"]) for r in rows] == [(0.0, 0.1), (1.0, 1.1)]


def _fake_overoptimization(monkeypatch, calls):
  """Fakes for every stage the study borrows; ``calls`` counts the scorer calls per process."""
  from rlhf_jax import data as data_lib
  from rlhf_jax.data import preferences
  from rlhf_jax.feedback import scorers as scorers_lib
  from rlhf_jax.feedback import simulated as simulated_lib
  from rlhf_jax.train import common, overoptimization
  from rlhf_jax.train import pipeline as pl
  from rlhf_jax.train import ppo as ppo_train
  from rlhf_jax.train import reward as reward_train

  t = 3  # response tokens

  def gold(prompts, responses):
    calls[jax.process_index()] += 1
    return np.arange(len(prompts), dtype=np.float64) + 0.1 * calls[jax.process_index()]

  class Sampler:
    def __init__(self, *a):
      pass

    def sample(self, params, ids, mask, seed, temperature, desc=""):
      return np.full((len(ids), t), seed % 7), np.ones((len(ids), t), np.int32)

    def scores(self, params, ids, mask):
      return ids[:, -1].astype(np.float64)

    def logprobs(self, params, ids, mask, tokens, temperature):
      return np.full(tokens.shape, -1.5 if params == "b" else -1.0)  # base "b", policy

  step = {"n": 0}

  def train_policy(*a, stop_after, **k):
    step["n"] += stop_after
    return SimpleNamespace(step=step["n"], params={"policy": {"w": "policy"}}), None

  tok = SimpleNamespace(eos_token_id=1, pad_token_id=0)
  prompts = [f"prompt {i}" for i in range(8)]
  monkeypatch.setattr(overoptimization, "check_config", lambda cfg: None)
  monkeypatch.setattr(common, "build_mesh", lambda spec: None)
  monkeypatch.setattr(common, "check_batch_sizes", lambda mesh, sizes: None)
  monkeypatch.setattr(pl, "load_scorers", lambda spec, probe=True: gold)
  monkeypatch.setattr(scorers_lib, "get_scorer", lambda name: gold)
  monkeypatch.setattr(pl, "prepare_data", lambda spec, out, seed: tok)
  monkeypatch.setattr(pl, "base_stage", lambda cfg, root, tk, mesh: (SimpleNamespace(cfg=0), "b"))
  monkeypatch.setattr(
    pl.Models, "from_base", staticmethod(lambda cfg: SimpleNamespace(lm=0, scalar=0))
  )
  monkeypatch.setattr(pl, "Sampler", Sampler)
  monkeypatch.setattr(pl, "sampling_batch", lambda spec, hp: 4)
  monkeypatch.setattr(pl, "read_prompts", lambda d, split: prompts)
  monkeypatch.setattr(
    data_lib, "encode_prompts", lambda tk, p, n: (np.ones((len(p), 2)), np.ones((len(p), 2)))
  )
  monkeypatch.setattr(pl, "decode_responses", lambda tk, x, m: [str(r) for r in x.tolist()])
  monkeypatch.setattr(
    simulated_lib,
    "annotate_pairs",
    lambda lab, p, a, b, **k: [
      preferences.PreferenceRecord(x, y, z, "a") for x, y, z in zip(p, a, b)
    ],
  )
  monkeypatch.setattr(pl, "pairs_arrays", lambda *a: {"label": np.zeros(len(a[0]))})
  monkeypatch.setattr(pl, "label_indices", lambda records: np.zeros(len(records)))
  monkeypatch.setattr(reward_train, "train_reward_model", lambda *a, **k: ("rm", None))
  monkeypatch.setattr(ppo_train, "fit_reward_norm", lambda *a: (1.0, 0.0))
  monkeypatch.setattr(pl, "join_sequences", lambda ids, mask, t, m: (t, m))
  monkeypatch.setattr(pl, "train_policy", train_policy)
  return step


def test_overoptimization_writes_and_scores_on_process_zero_only(tmp_path, monkeypatch):
  from rlhf_jax.train import overoptimization
  from rlhf_jax.train import pipeline as pl

  calls = {0: 0, 1: 0}
  step = _fake_overoptimization(monkeypatch, calls)
  cfg = overoptimization.Config(
    label_counts=(4,),
    bon_ns=(1, 2),
    ppo_eval_every=1,
    num_eval_prompts=4,
    ppo=dataclasses.replace(pl.PPOSpec(), iterations=2),
  )
  procs = TwoProcesses(monkeypatch)
  want = procs.run_as(0, lambda: overoptimization.run(cfg, str(tmp_path / "p0")))
  step["n"] = 0
  got = procs.run_as(1, lambda: overoptimization.run(cfg, str(tmp_path / "p1")))
  assert _files(tmp_path / "p1") == []
  # the gold scorer ran on process 0 alone: two best-of-n sample sets, two PPO evaluations;
  # its scores (which differ per call) reached process 1, so both computed the same fits
  assert calls == {0: 2 + 2, 1: 0}
  assert got["fits"] == want["fits"] and got["report"] == want["report"]
  assert procs.names() == [
    "workdir",
    "start-up: probe scorers",
    "labels: preferences.jsonl",
    "gold: base samples 0",
    "gold: base samples 1",
    "gold: ppo 4 labels, it 1",
    "gold: ppo 4 labels, it 2",
    "points, fits and report",
  ]
  out = tmp_path / "p0"
  assert len((out / "preferences.jsonl").read_text().splitlines()) == 4
  points = json.loads((out / "points.json").read_text())
  assert [(p["method"], p.get("n", p.get("iteration"))) for p in points] == [
    ("bon", 1),
    ("bon", 2),
    ("ppo", 1),
    ("ppo", 2),
  ]
  # gold relative to the base samples' mean (0..3 + 0.1 on the first call): best-of-1 is 0,
  # the scorer's k-th call is 0.1 (k - 1) above it (the second PPO evaluation: k = 4)
  assert points[0]["gold"] == pytest.approx(0.0)
  assert points[3]["gold"] == pytest.approx(0.3)
  assert json.loads((out / "fits.json").read_text()) == json.loads(want["fits"])
