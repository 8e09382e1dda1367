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

# The anchors' GPT-2 shapes (shared/anchors/hf_common.py), and SmolLM2-135M's shape (random
# init): Llama family, 30 layers x 576, 9 query and 3 key/value heads of 64, SwiGLU width
# 1536, RMSNorm, RoPE, tied 49 152-token vocabulary. ``hf`` is the Hugging Face config the
# model is built from (here and, by bench/peers/anchor_llama.py, for the peers).
SIZES = {
  "small": dict(n_layer=4, n_embd=256, n_head=4, vocab=8192, n_positions=128),
  "medium": dict(n_layer=8, n_embd=512, n_head=8, vocab=8192, n_positions=128),
  "smollm2": dict(
    n_layer=30,
    n_embd=576,
    n_head=9,
    vocab=49152,
    n_positions=2048,
    hf={
      "architectures": ["LlamaForCausalLM"],
      "model_type": "llama",
      "hidden_size": 576,
      "intermediate_size": 1536,
      "num_hidden_layers": 30,
      "num_attention_heads": 9,
      "num_key_value_heads": 3,
      "head_dim": 64,
      "vocab_size": 49152,
      "max_position_embeddings": 2048,
      "rms_norm_eps": 1e-5,
      "rope_theta": 100000.0,
      "hidden_act": "silu",
      "attention_bias": False,
      "mlp_bias": False,
      "tie_word_embeddings": True,
    },
  ),
}


def transformer_config(size, head, **overrides):
  """The :class:`TransformerConfig` of a benchmark size with ``head`` ("lm" | "scalar" |
  "both") and field overrides (dtype, remat, matmul_dtype, scan_unroll, ...)."""
  from rlhf_jax.models import TransformerConfig
  from rlhf_jax.models.hf import config_from_hf

  s = SIZES[size]
  if "hf" in s:
    return config_from_hf(s["hf"], head=head).replace(**overrides)
  return TransformerConfig(
    vocab_size=s["vocab"],
    d_model=s["n_embd"],
    n_layers=s["n_layer"],
    n_heads=s["n_head"],
    max_len=s["n_positions"],
    head=head,
    **overrides,
  )


def dense_params_per_layer(cfg):
  """Weights of one block's matmuls (q, k, v, o and the MLP), as a FLOP count needs them."""
  d = cfg.d_model
  head_dim = cfg.head_dim or d // cfg.n_heads
  q = cfg.n_heads * head_dim
  kv = (cfg.n_kv_heads or cfg.n_heads) * head_dim
  d_ff = cfg.d_ff or 4 * d
  mlp = (3 if cfg.mlp == "swiglu" else 2) * d * d_ff
  return d * q + 2 * d * kv + q * d + mlp


def forward_flops_per_token(cfg, seq_len):
  """Forward FLOPs per token of the trunk: 2 x dense params plus attention (QK^T and AV over
  ``seq_len`` keys, full, not causal-halved). Heads are counted by the caller."""
  head_dim = cfg.head_dim or cfg.d_model // cfg.n_heads
  attn = 2 * cfg.n_heads * head_dim * seq_len
  return 2 * cfg.n_layers * (dense_params_per_layer(cfg) + attn)


def reward_step_flops(cfg, seq_len, sequences):
  """Model FLOPs of one reward-model training step (forward + backward = 3x forward)."""
  return 3 * forward_flops_per_token(cfg, seq_len) * sequences * seq_len


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
    # launchers/malloc_env.sh's huge-page setting (inherited by the peers) changes kernel time
    "GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES", ""),
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


PEER_WRAPPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers", "anchor_llama.py")


def run_anchor(venv, script, size, args, timeout=3600):
  """An anchor peer script on a benchmark size: directly for the anchors' own GPT-2 sizes,
  through ``bench/peers/anchor_llama.py`` for the Llama-family ones (``smollm2``)."""
  if "hf" in SIZES[size]:
    return run_peer(venv, PEER_WRAPPER, [script, "--size", size, *args], timeout=timeout)
  return run_peer(venv, script, ["--size", size, *args], timeout=timeout)


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
