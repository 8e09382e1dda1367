"""Shared helpers for the benchmark scripts: timing, the matmul peak, peers in the same run.

Peers are the anchor scripts in ``../shared/anchors`` (TRL, Hugging Face ``generate``,
Tunix), run in their own virtual environments under ``$VENVS`` (default ``~/venvs``) when
those exist; their ``RESULT {json}`` lines are parsed. Nothing here is imported by the
library.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time

ANCHORS = os.environ.get(
  "RLHF_JAX_ANCHORS",
  os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "anchors"),
)
VENVS = os.environ.get("VENVS", os.path.expanduser("~/venvs"))

# The anchors' GPT-2 shapes (shared/anchors/hf_common.py).
SIZES = {
  "small": dict(n_layer=4, n_embd=256, n_head=4, vocab=8192, n_positions=128),
  "medium": dict(n_layer=8, n_embd=512, n_head=8, vocab=8192, n_positions=128),
}


def reward_step_flops(n_layers, d_model, seq_len, sequences):
  """Model FLOPs of one reward-model training step (forward + backward = 3x forward):
  6 x dense params x tokens plus attention (QK^T and AV, full, not causal-halved)."""
  tokens = sequences * seq_len
  return 6 * 12 * n_layers * d_model**2 * tokens + 12 * n_layers * d_model * seq_len * tokens


def set_xla_threads():
  """Same XLA threading as the anchors' JAX scripts (only when XLA_FLAGS is unset)."""
  os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads=2"
  )


def summarize(ts):
  return {
    "min": min(ts),
    "median": statistics.median(ts),
    "max": max(ts),
    "n": len(ts),
    "times": [round(t, 6) for t in ts],
  }


def timeit(fn, repeats, warmup=1):
  for _ in range(warmup):
    fn()
  ts = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t0)
  return summarize(ts)


def cpu_model():
  """The host CPU as /proc/cpuinfo names it: GEMM peaks differ 2x between hosts of one name."""
  fields = {}
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "cpu family", "model") and key not in fields:
          fields[key] = value.strip()
  except OSError:
    pass
  return fields


def unroll_arg(value):
  """``--scan-unroll``: ``all`` (= 0) unrolls every layer, else layers per scan step."""
  return 0 if value == "all" else int(value)


def info():
  import jax

  return {
    "python": platform.python_version(),
    "jax": jax.__version__,
    "cpu": cpu_model(),
    "devices": str(jax.devices()),
    "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
    "loadavg": os.getloadavg(),
    "nproc": os.cpu_count(),
  }


def emit(record, out=None):
  line = json.dumps(record, sort_keys=True, default=float)
  print("RESULT " + line, flush=True)
  if out:
    with open(out, "a") as f:
      f.write(line + "\n")


def record_peer(row, recs, tag, name, unit, ours, out=None):
  """The peer's last record (if it ran) is emitted under ``tag``; ``row`` gets its
  ``<name>_<unit>`` (the peer's median) and ``ratio_vs_<name>`` (ours over the peer's)."""
  if not recs:
    return
  r = recs[-1]
  emit(dict(r, tag=tag), out)
  row[f"{name}_{unit}"] = r[f"{unit}_median"]
  row[f"ratio_vs_{name}"] = ours[f"{unit}_median"] / r[f"{unit}_median"]


def matmul_peak(n=2048, repeats=7, dtype="float32"):
  """Best and median GFLOP/s of an n^3 jitted matmul in ``dtype``, measured now."""
  import jax
  import jax.numpy as jnp

  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(dtype)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32).astype(dtype)
  f = jax.jit(lambda x, y: x @ y)
  f(a, b).block_until_ready()
  t = timeit(lambda: f(a, b).block_until_ready(), repeats)
  flops = 2 * n**3
  return {
    "gflops_best": flops / t["min"] / 1e9,
    "gflops_median": flops / t["median"] / 1e9,
    "n": n,
    "dtype": dtype,
  }


def begin(out):
  """Create the folder of ``out`` (a JSONL path or None), then measure and record the f32
  matmul peak of this invocation; returns the peak record."""
  if out:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  peak = matmul_peak()
  emit(dict(peak, tag="matmul_peak_f32", info=info()), out)
  return peak


def run_peer(venv, script, args, timeout=1800):
  """Run a peer script in its venv; returns its RESULT records ([] if unavailable).

  ``script``: a file of the anchors folder, or an absolute path (a peer kept in ``bench/``)."""
  python = os.path.join(VENVS, venv, "bin", "python")
  path = os.path.join(ANCHORS, script)
  if not (os.path.exists(python) and os.path.exists(path)):
    print(f"[peer] skipped {script}: {python} or {path} missing", file=sys.stderr)
    return []
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # the anchor scripts set their own
  env["BENCH_RESULTS_DIR"] = os.environ.get("BENCH_PEER_RESULTS", "/tmp/rlhf_jax_peer_results")
  print(f"[peer] {venv}: {script} {' '.join(args)}", file=sys.stderr, flush=True)
  proc = subprocess.run(
    [python, path, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ANCHORS
  )
  records = [
    json.loads(l[len("RESULT ") :]) for l in proc.stdout.splitlines() if l.startswith("RESULT ")
  ]
  if proc.returncode != 0 or not records:
    print(f"[peer] {script} failed (rc={proc.returncode}):\n{proc.stderr[-2000:]}", file=sys.stderr)
  return records


# The model variants that bench/ppo.py and bench/reward.py --compare time alternately:
# TransformerConfig overrides by name.
COMPARE_VARIANTS = {
  "f32": {},
  "remat": {"remat": True},
  "bf16": {"matmul_dtype": "bfloat16"},
  "bf16_remat": {"matmul_dtype": "bfloat16", "remat": True},
}


def reward_batch(pairs: int, seq_len: int, vocab: int) -> dict:
  """A fixed random reward-model batch: ``pairs`` pairs of ``seq_len`` tokens ending in token
  0, all labelled A."""
  import numpy as np

  rng = np.random.default_rng(0)
  ids_a = rng.integers(1, vocab, (pairs, seq_len)).astype(np.int32)
  ids_b = rng.integers(1, vocab, (pairs, seq_len)).astype(np.int32)
  ids_a[:, -1] = ids_b[:, -1] = 0
  return {
    "ids_a": ids_a,
    "mask_a": np.ones_like(ids_a),
    "ids_b": ids_b,
    "mask_b": np.ones_like(ids_b),
    "label": np.zeros(pairs, np.int32),
  }
