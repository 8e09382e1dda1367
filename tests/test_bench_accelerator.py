"""bench/accelerator.py: the analytic parameter counts behind its MFU and size choice equal the
real models' (abstract init), the size choice against hand-worked memory budgets, the decode
byte count by hand, and (slow) the tiny CPU run end to end."""

import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import accelerator  # noqa: E402
import scale_plan  # noqa: E402

from rlhf_jax.models import Transformer, init_params  # noqa: E402

WL = scale_plan.Workload(prompt_len=8, response_len=8)


def _abstract_params(size: str, head: str):
  model = Transformer(scale_plan.model_config(size, head, WL))
  return jax.eval_shape(lambda rng: init_params(model, rng), jax.random.PRNGKey(0))


@pytest.mark.parametrize("size", ["tiny", "135M", "0.5B"])
def test_param_count_and_flops_match_the_initialised_model(size):
  for head in ("lm", "scalar"):
    params = _abstract_params(size, head)
    real = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    assert accelerator.param_count(size, head) == real, (size, head)
  # The FLOPs of the MFU: 2 x the blocks' matmul weights per token, and 2 x the LM head's
  # (the tied embedding, or lm_head) per head token.
  lm = _abstract_params(size, "lm")
  # (stacked layers: kernels are [L, in, out]; norm scales and biases [L, n])
  matmul = sum(math.prod(x.shape) for x in jax.tree.leaves(lm["layers"]) if len(x.shape) == 3)
  assert scale_plan.forward_flops(size, 1, 0, 0, False) == 2 * matmul
  head = lm["lm_head"]["kernel"] if "lm_head" in lm else lm["embed"]["embedding"]
  assert scale_plan.forward_flops(size, 0, 1, 0, True) == 2 * math.prod(head.shape)


def test_smollm2_135m_has_its_published_size():
  # SmolLM2-135M (tied embeddings): 134,515,008 parameters in the Hugging Face checkpoint.
  assert accelerator.param_count("135M", "lm") == 134_515_008


def test_pick_size_takes_the_largest_state_that_fits_half_the_memory():
  gib = 2**30
  # PPO state = 20 bytes x (policy + value) parameters: 1B = 20 x 2,471,630,848 = 49.4 GB,
  # 0.5B = 19.8 GB, 8B = 310.7 GB.
  assert accelerator.ppo_state_bytes("1B") == 20 * (1_235_814_400 + 1_235_816_448)
  assert accelerator.pick_size(80 * gib) == "0.5B"  # one 80 GiB GPU: 40 GiB < 46 GiB
  assert accelerator.pick_size(141 * gib) == "1B"  # one H200 (70.5 GiB for the state)
  assert accelerator.pick_size(8 * 80 * gib) == "8B"  # 8 x 80 GiB: 320 GiB > 289 GiB
  assert accelerator.pick_size(8 * 16 * gib) == "1B"  # 8 x TPU v5e
  need = accelerator.ppo_state_bytes("360M")
  assert accelerator.pick_size(2 * need) == "360M"
  assert accelerator.pick_size(2 * need - 1) == "135M"
  assert accelerator.pick_size(1) == "135M"  # nothing fits: the smallest


def test_decode_bytes_per_step_by_hand():
  # tiny: 106,816 bf16 weights (tied: the head reads the whole embedding); K and V caches of
  # 2 layers x 4 rows x 24 slots x 2 kv heads x 16 dims x 2 bytes each.
  assert accelerator.decode_bytes_per_step("tiny", 4, 24, 2) == 2 * 106_816 + 2 * (
    2 * 4 * 24 * 2 * 16 * 2
  )
  # 8B (untied): the input embedding is read only by its 4 looked-up rows.
  weights = 8_030_261_248 - (128_256 - 4) * 4096
  kv = 2 * 32 * 4 * 100 * 8 * 128 * 2
  assert accelerator.decode_bytes_per_step("8B", 4, 100, 2) == 2 * weights + kv


def test_device_peaks_prefers_the_specific_name():
  assert accelerator.device_peaks("NVIDIA H100 PCIe") == (756e12, 2.0e12)
  assert accelerator.device_peaks("NVIDIA H100 80GB HBM3") == (989e12, 3.35e12)
  assert accelerator.device_peaks("TPU v5 lite") == (197e12, 0.819e12)
  assert accelerator.device_peaks("cpu") is None


@pytest.mark.slow  # one process compiling the PPO iteration, reward step and sampler: ~70 s
def test_tiny_cpu_run_end_to_end(tmp_path):
  out = tmp_path / "acc.jsonl"
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop("XLA_FLAGS", None)  # one CPU device, as the documented command runs
  cmd = [sys.executable, os.path.join(ROOT, "bench", "accelerator.py")]
  cmd += "--size tiny --allow-cpu --iters 1 --prompt-len 8 --response-len 16".split()
  cmd += "--decode-short 4 --rollouts-per-device 4 --pairs-per-device 4 --decode-batch 4".split()
  proc = subprocess.run(
    cmd + ["--out", str(out)], env=env, capture_output=True, text=True, timeout=900
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  (line,) = out.read_text().splitlines()
  rec = json.loads(line)
  assert rec["size"] == "tiny" and rec["platform"] == "cpu" and rec["devices"] == 1
  assert rec["params_lm"] == 106_816
  peak = rec["measured_cpu_bf16_matmul"]["gflops_best"] * 1e9
  assert rec["peak_tflops_per_device"] == pytest.approx(peak / 1e12)
  for key in ("ppo_update_mfu", "ppo_rollout_mfu", "ppo_iteration_mfu", "reward_mfu"):
    assert math.isfinite(rec[key]) and 0 < rec[key] < 1.5, (key, rec[key])
  # MFU is the analytic FLOPs over the time and the measured peak.
  flops = scale_plan.ppo_flops("tiny", scale_plan.Workload(**rec["workload"]), 4)
  assert rec["ppo_flops"] == flops
  t_upd = rec["ppo_update_phase_s"]["median"]
  assert rec["ppo_update_mfu"] == pytest.approx(flops["update"] / t_upd / peak)
  assert rec["ppo_samples_per_s"] == pytest.approx(4 / rec["ppo_s_per_iteration"]["median"])
  assert rec["reward_pairs_per_s"] == pytest.approx(4 / rec["reward_s_per_step"]["median"])
  assert rec["decode_bytes_per_step"] == accelerator.decode_bytes_per_step("tiny", 4, 28, 2)
  per_token = rec["decode_s_per_token"]
  assert math.isfinite(per_token)
  if per_token > 0:  # the difference of two short timings can come out negative on a CPU
    assert rec["decode_gbps"] == pytest.approx(rec["decode_bytes_per_step"] / per_token / 1e9)
  assert rec["decode_bandwidth_fraction"] is None  # no bandwidth peak known for a CPU


def test_no_bench_script_shadows_a_standard_module():
  """bench/ is put on sys.path (here and by the scripts); a script named like a standard
  module (bench/profile.py did) replaces it for every later import in the process — torch
  and transformers then fail to import."""
  names = {p.stem for p in pathlib.Path(ROOT, "bench").glob("*.py")}
  assert not names & set(sys.stdlib_module_names)
