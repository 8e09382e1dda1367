"""The algorithm comparison (task "compare", configs/algorithms.py): its fairness checks
name the field, and the table and plot writer turns eval rows into README.md, a plot and
rows.json with intervals over seeds. The full comparison is run by hand (minutes to hours)."""

import dataclasses
import json
import pathlib
import shutil

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _rows():
  rng = np.random.default_rng(0)
  rows = []
  for i, name in enumerate(("ppo", "grpo", "rloo", "dpo")):
    for seed in (0, 1, 2):
      for rnd in (1, 2):
        rows.append(
          {
            "algorithm": name,
            "seed": seed,
            "round": rnd,
            "kl": 2.0 * rnd + i + rng.normal(0, 0.2),
            "gold_reward_mean": 0.1 * rnd + 0.05 * i + rng.normal(0, 0.02),
            "gold_reward_ref_mean": 0.05,
            "win_rate": 0.5 + 0.05 * rnd + rng.normal(0, 0.02),
            "rm_accuracy": 0.7,
            "n_labels": 256 * rnd,
            "ppo_seconds": 30.0 + i,
            "round_seconds": 60.0 + i,
            "run_seconds": 120.0 + i,
          }
        )
  return rows


def test_writer_makes_the_table_plot_and_rows(tmp_path):
  from rlhf_jax.train import compare
  from rlhf_jax.train.seeds import t_interval

  rows = _rows()
  budgets = {
    n: {"labels": 512, "policy_samples_per_round": 0 if n == "dpo" else 1536}
    for n in ("ppo", "grpo", "rloo", "dpo")
  }
  text = compare.write_comparison(rows, tmp_path / "out", budgets, "Synthetic")
  out = tmp_path / "out"
  assert (out / "README.md").read_text() == text
  assert (out / "algorithms.png").stat().st_size > 10_000
  assert json.loads((out / "rows.json").read_text()) == rows
  assert text.startswith("# Synthetic") and "4 algorithms × 3 seeds" in text
  # The last-round row of grpo: mean [95% t interval] of its three seeds' KL.
  last = [r["kl"] for r in rows if r["algorithm"] == "grpo" and r["round"] == 2]
  mean, lo, hi = t_interval(last)
  grpo_line = next(line for line in text.splitlines() if line.startswith("| grpo | 3 |"))
  assert f"{mean:.3f} [{lo:.3f}, {hi:.3f}]" in grpo_line and "1536" in grpo_line
  dpo_line = next(line for line in text.splitlines() if line.startswith("| dpo | 3 |"))
  assert "— (pairs)" in dpo_line
  assert text.count("| ppo | ") == 3  # one last-round row, two per-round rows
  assert grpo_line.endswith("| 121 (121–121) |")  # the whole run's wall time, median (range)


def test_shipped_config_validates_and_arms_compare_fairly(monkeypatch):
  from rlhf_jax import main as entry
  from rlhf_jax.train import compare

  monkeypatch.chdir(ROOT)
  cfg = entry.load_config_file("configs/algorithms.py:smoke")
  _, valid = entry.validate(cfg)
  budgets = {n: compare.budget(a) for n, a in compare.arm_configs(valid).items()}
  assert set(budgets) == {"ppo", "grpo", "rloo", "dpo"}
  assert {b["policy_samples_per_round"] for n, b in budgets.items() if n != "dpo"} == {96}
  assert budgets["dpo"]["policy_samples_per_round"] == 0
  assert len({b["labels"] for b in budgets.values()}) == 1


def test_unfair_or_broken_arms_are_refused_naming_the_field(monkeypatch):
  from rlhf_jax import main as entry
  from rlhf_jax.config_schema import ConfigError

  monkeypatch.chdir(ROOT)
  cfg = entry.load_config_file("configs/algorithms.py:smoke")
  cfg.arms = ("ppo=configs/sentiment.py:pairwise_smoke", "grpo=configs/grpo.py")  # smoke vs full
  with pytest.raises(ConfigError, match=r"config\.arms: the RL arms differ in policy samples"):
    entry.validate(cfg)
  cfg.arms = ("ppo=configs/nope.py",)
  with pytest.raises(ConfigError, match=r"config\.arms\[0\]='ppo=configs/nope\.py'"):
    entry.validate(cfg)
  cfg.arms = ("configs/grpo.py",)
  with pytest.raises(ConfigError, match=r"expected 'name=path"):
    entry.validate(cfg)
  cfg.arms = ("ppo=configs/sentiment.py:pairwise_smoke",)
  cfg.seeds = (1, 1)
  with pytest.raises(ConfigError, match=r"config\.seeds=\(1, 1\)"):
    entry.validate(cfg)


def _arms(monkeypatch, variant=""):
  import dataclasses

  from rlhf_jax import main as entry
  from rlhf_jax.train import compare

  monkeypatch.chdir(ROOT)
  _, cfg = entry.validate(entry.load_config_file("configs/algorithms.py" + variant))
  return {n: dataclasses.replace(a, seed=0) for n, a in compare.arm_configs(cfg).items()}


@pytest.mark.parametrize("variant", ["", ":smoke"])
def test_the_shipped_arms_read_the_same_round_one(monkeypatch, variant):
  """The four arms of one seed sample, label and train the reward model identically (the
  policy stage's fields differ, the sampling batch does not), so round 1 is shared."""
  from rlhf_jax.train import compare
  from rlhf_jax.train import pipeline as pl

  arms = _arms(monkeypatch, variant)
  inputs = {n: compare.round1_inputs(a) for n, a in arms.items()}
  assert all(v == inputs["ppo"] for v in inputs.values())
  batches = {pl.sampling_batch(a.ppo, a.ppo.hparams) for a in arms.values()}
  assert len(batches) == 1  # GRPO's 16 prompts x 4 = PPO's 64 rollouts
  assert {a.ppo.hparams.algorithm for a in arms.values()} == {"ppo", "grpo", "rloo", "dpo"}


def test_round_one_is_not_shared_when_its_inputs_differ(monkeypatch):
  import dataclasses

  from rlhf_jax.train import compare

  arms = _arms(monkeypatch)
  ppo, grpo = arms["ppo"], arms["grpo"]
  same = compare.round1_inputs(ppo)
  other_seed = dataclasses.replace(grpo, seed=1)
  rm_lr = dataclasses.replace(
    grpo,
    reward=dataclasses.replace(
      grpo.reward, optimizer=dataclasses.replace(grpo.reward.optimizer, learning_rate=1e-4)
    ),
  )
  batch = dataclasses.replace(grpo, ppo=dataclasses.replace(grpo.ppo, batch_size=8))
  temp = dataclasses.replace(
    grpo,
    ppo=dataclasses.replace(
      grpo.ppo, hparams=dataclasses.replace(grpo.ppo.hparams, temperature=1.0)
    ),
  )
  labels = dataclasses.replace(grpo, feedback=dataclasses.replace(grpo.feedback, flip_prob=0.1))
  for changed in (other_seed, rm_lr, batch, temp, labels):
    assert compare.round1_inputs(changed) != same
  # the policy stage's own settings and the rounds that follow do not matter
  kl = dataclasses.replace(grpo, ppo=dataclasses.replace(grpo.ppo, init_kl_coef=0.5), rounds=3)
  assert compare.round1_inputs(kl) == same


def test_share_round1_copies_a_finished_round_only_once(tmp_path):
  from rlhf_jax.train import compare

  src, dst = tmp_path / "a", tmp_path / "b"
  (src / "round_1" / "reward" / "ckpt").mkdir(parents=True)
  (src / "round_1" / "reward" / "ckpt" / "x.bin").write_bytes(b"\x01\x02")
  for name, text in (("pairs.npz", "p"), ("labels.json", "{}"), ("preferences.jsonl", "")):
    (src / "round_1" / name).write_text(text)
  (src / "round_1" / "eval.json").write_text("{}")  # the policy's results are never copied
  assert not compare.share_round1(src, dst)  # round 1 of src is not finished
  (src / "round_1" / "DONE").write_text("{}")
  assert compare.share_round1(src, dst)
  got = sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file())
  assert got == [
    "round_1/labels.json",
    "round_1/pairs.npz",
    "round_1/preferences.jsonl",
    "round_1/reward/ckpt/x.bin",
  ]
  # a supervised stage (the model round 1 sampled from) comes along, its checkpoints not
  shutil.rmtree(dst)
  (src / "sft" / "model").mkdir(parents=True)
  (src / "sft" / "checkpoints").mkdir()
  for name in ("DONE", "eval.json", "model/config.json", "checkpoints/7"):
    (src / "sft" / name).write_text("{}")
  (dst / "sft").mkdir(parents=True)
  (dst / "sft" / "partial").write_text("")  # dst's own unfinished attempt: replaced
  assert compare.share_round1(src, dst)
  got = sorted(p.relative_to(dst).as_posix() for p in (dst / "sft").rglob("*") if p.is_file())
  assert got == ["sft/DONE", "sft/eval.json", "sft/model/config.json"]
  assert not (dst / "sft.shared.tmp").exists()
  (dst / "round_1" / "labels.json").write_text('{"mine": 1}')
  assert not compare.share_round1(src, dst)  # dst already labelled: left alone
  assert (dst / "round_1" / "labels.json").read_text() == '{"mine": 1}'
  assert not (dst / "round_1.shared.tmp").exists()


@pytest.mark.slow
def test_shared_round_one_equals_recomputing_it(tmp_path, monkeypatch):
  """Two smoke arms (PPO, GRPO), one seed: with sharing, GRPO takes PPO's pairs and reward
  model; without it, GRPO computes them itself — and gets the same pairs, the same reward
  model evaluation and the same policy results."""
  from rlhf_jax import main as entry

  monkeypatch.chdir(ROOT)
  evals = {}
  for share in (True, False):
    cfg = entry.load_config_file("configs/algorithms.py:smoke")
    cfg.arms = ("ppo=configs/sentiment.py:pairwise_smoke", "grpo=configs/grpo.py:smoke")
    cfg.seeds = (0,)
    cfg.share_round1 = share
    cfg.out_dir = str(tmp_path / f"out_{share}")
    work = tmp_path / f"w_{share}"
    entry.run_task(cfg, str(work))
    runs = work / "runs"
    evals[share] = {
      n: json.loads((runs / f"{n}_s0" / "round_1" / "eval.json").read_text())
      for n in ("ppo", "grpo")
    }
    pairs = {n: dict(np.load(runs / f"{n}_s0" / "round_1" / "pairs.npz")) for n in ("ppo", "grpo")}
    for k in pairs["ppo"]:
      np.testing.assert_array_equal(pairs["ppo"][k], pairs["grpo"][k])
  for n in ("ppo", "grpo"):
    a, b = evals[True][n], evals[False][n]
    for k in ("rm_accuracy", "rm_tie_param", "win_rate", "kl", "gold_reward_mean"):
      assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), (n, k)
  assert evals[True]["grpo"]["rm_seconds"] < evals[False]["grpo"]["rm_seconds"]


def test_a_run_folder_made_by_another_config_is_refused(tmp_path, monkeypatch):
  """An arm whose config changed since its run folder was made (here PPO's iterations) is
  refused, naming the folder and the field, and the folder's config.json is left as it
  was; the same config, or a folder with nothing made yet, passes."""
  import dataclasses

  from rlhf_jax import config_schema
  from rlhf_jax import main as entry
  from rlhf_jax.train import compare

  monkeypatch.chdir(ROOT)
  _, valid = entry.validate(entry.load_config_file("configs/algorithms.py:smoke"))
  arm = compare.arm_configs(valid)["ppo"]
  rdir = tmp_path / "ppo_s0"
  rdir.mkdir()
  (rdir / "config.json").write_text(json.dumps(config_schema.to_dict(arm)))
  changed = dataclasses.replace(arm, ppo=dataclasses.replace(arm.ppo, iterations=99))
  compare.check_run_folder(rdir, changed)  # nothing made yet: a new config may take it
  (rdir / "round_1").mkdir()
  compare.check_run_folder(rdir, arm)
  before = (rdir / "config.json").read_text()
  with pytest.raises(entry.UsageError) as e:
    compare.check_run_folder(rdir, changed)
  assert str(rdir) in str(e.value) and "ppo.iterations" in str(e.value)
  assert (rdir / "config.json").read_text() == before


def test_a_study_workdir_may_grow_its_run_list_and_nothing_else(tmp_path, monkeypatch):
  """A study's workdir reruns with more seeds (compare) or more KL coefficients
  (sycophancy) — the new runs are made, the finished ones read — while a change to a field
  that shapes every run (compare's rounds, sycophancy's arm config) is refused as before."""
  from rlhf_jax import config_schema, workdir
  from rlhf_jax.train import compare, sycophancy

  monkeypatch.chdir(ROOT)
  cases = [
    (compare, compare.Config(seeds=(0,)), {"seeds": (0, 1, 2)}, {"rounds": 3}),
    (
      sycophancy,
      sycophancy.Config(kl_coefs=(0.05,)),
      {"kl_coefs": (0.05, 0.2), "biases": (0.0,)},
      {"arm_config": "configs/sycophancy.py:arm_smoke"},
    ),
  ]
  for module, made, grown, other in cases:
    work = tmp_path / module.__name__.rsplit(".", 1)[-1]
    workdir.record_config(work, config_schema.to_dict(made), module)
    (work / "runs").mkdir()
    before = (work / "config.json").read_text()
    workdir.check_config(work, config_schema.to_dict(dataclasses.replace(made, **grown)), module)
    with pytest.raises(workdir.UsageError) as e:
      workdir.record_config(
        work, config_schema.to_dict(dataclasses.replace(made, **grown, **other)), module
      )
    assert str(work) in str(e.value) and next(iter(other)) in str(e.value)
    assert (work / "config.json").read_text() == before


def test_shared_data_made_by_another_first_seed_is_refused(tmp_path):
  """``shared/`` (data and base model, made with the first arm and first seed) records what
  made it; a study whose first seed or first arm's data changed since is refused, naming
  the folder and field, instead of reading data another setting made. A folder made
  before the record existed is taken as it is (and then recorded)."""
  from rlhf_jax import config_schema
  from rlhf_jax import main as entry
  from rlhf_jax.train import compare

  _, valid = entry.validate(entry.load_config_file(str(ROOT / "configs/algorithms.py:smoke")))
  first = dataclasses.replace(next(iter(compare.arm_configs(valid).values())), seed=0)
  shared = tmp_path / "shared"
  shared.mkdir()
  compare._record_shared(shared, valid, first)  # no record yet: taken, then recorded
  made_by = json.loads((shared / "config.json").read_text())
  assert made_by["seed"] == 0 and made_by["data"] == json.loads(
    json.dumps(config_schema.to_dict(first.data))
  )
  compare._record_shared(shared, valid, first)
  cache = dataclasses.replace(first, data=dataclasses.replace(first.data, cache_dir="/elsewhere"))
  compare._record_shared(shared, valid, cache)  # a result-neutral field
  before = (shared / "config.json").read_text()
  for changed, field in [
    (dataclasses.replace(first, seed=1), "seed"),
    (
      dataclasses.replace(first, data=dataclasses.replace(first.data, num_prompts=7)),
      "data.num_prompts",
    ),
  ]:
    with pytest.raises(entry.UsageError) as e:
      compare._record_shared(shared, valid, changed)
    assert str(shared) in str(e.value) and f"{field}:" in str(e.value)
  assert (shared / "config.json").read_text() == before
