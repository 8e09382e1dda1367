"""Pieces shared by the training loops: model specs and presets, optimizers, mesh specs.

The loops receive frozen dataclasses (built from configs at the entry point); the helpers
here turn them into models, params placed on the mesh, and optax optimizers.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import numpy as np
import optax

from rlhf_jax import checkpoint, config_schema, distributed, lora, optim, sharding
from rlhf_jax.config_schema import ConfigError
from rlhf_jax.models import Transformer, TransformerConfig, boxed_init_fn, init_params
from rlhf_jax.train.metrics import MetricWriter, fetch, progress

__all__ = [
  "ConfigError",
  "DivergenceError",
  "check_skipped",
  "check_output_paths",
  "OPTIM_BOUNDS",
  "spec_errors",
  "check_batch_sizes",
  "SKIPPED_BOUNDS",
  "LOOP_BOUNDS",
  "LOOP_NEUTRAL_FIELDS",
  "LOOP_FIELDS",
  "config_kwargs",
  "TrainLoop",
  "PRESETS",
  "ModelSpec",
  "MeshSpec",
  "OptimSpec",
  "preset_config",
  "build_mesh",
  "load_model",
  "make_optimizer",
  "shard_params",
  "LoraConfig",
  "lora_errors",
  "lora_spec",
  "lora_trainable",
]

_log = logging.getLogger(__name__)

# Architecture presets for models initialised from scratch. "small"/"medium" are the
# What the Llama-style presets share (RMSNorm, SwiGLU, RoPE, no biases).
_LLAMA = dict(
  norm="rmsnorm",
  mlp="swiglu",
  activation="silu",
  position="rope",
  qkv_bias=False,
  out_bias=False,
  mlp_bias=False,
  max_len=2048,
)

# GPT-2 shapes of the benchmark anchors; "tiny" is for tests.
PRESETS = {
  "tiny": dict(d_model=32, n_layers=2, n_heads=2, max_len=128),
  "gpt2-small": dict(d_model=256, n_layers=4, n_heads=4, max_len=128),
  "gpt2-medium": dict(d_model=512, n_layers=8, n_heads=8, max_len=128),
  "gpt2-base": dict(d_model=768, n_layers=12, n_heads=12, max_len=1024),
  # Llama-style at test size: the assistant task's smoke base (a chat checkpoint's vocabulary
  # at random init, exported as LlamaForCausalLM).
  "llama-tiny": dict(
    _LLAMA, d_model=64, n_layers=2, n_heads=2, n_kv_heads=1, d_ff=128, tie_embeddings=True
  ),
  "llama-small": dict(
    _LLAMA, d_model=256, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=688, tie_embeddings=False
  ),
}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """Where a model comes from: a checkpoint directory, or a preset initialised at random."""

  path: Optional[str] = None  # Hugging Face-layout directory; None or "": use the preset
  preset: str = "gpt2-small"  # used without a path
  vocab_size: int = 8192  # used without a path
  dtype: str = "float32"  # compute dtype ("bfloat16" on accelerators)
  remat: bool = False  # recompute each block in the backward pass
  scan_unroll: int = 1  # layers per scan iteration (0: every layer unrolled, faster on CPU)
  # Operand dtype of the dense matmuls, f32 accumulation ("bfloat16" on TPU/GPU and CPUs with
  # AVX512-BF16; docs/performance.md); "": the compute dtype.
  matmul_dtype: str = ""

  def __post_init__(self):
    if self.matmul_dtype not in ("", "float32", "bfloat16", "float16"):
      raise ValueError(
        f"model.matmul_dtype={self.matmul_dtype!r}; expected '' (the compute dtype), "
        "'float32', 'bfloat16' or 'float16'"
      )


@dataclasses.dataclass(frozen=True)
class MeshSpec:
  data: int = 1
  fsdp: int = -1
  tensor: int = 1


@dataclasses.dataclass(frozen=True)
class OptimSpec:
  name: str = "adam"  # "adam" | "adamw" | "tf_adam" (TensorFlow epsilon placement)
  learning_rate: float = 1e-5
  anneal: bool = True  # linear decay to 0 over the run (OAI)
  warmup_steps: int = 0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-5
  weight_decay: float = 0.0
  max_grad_norm: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """The ``lora`` block of a trainer config: LoRA adapters instead of dense fine-tuning
  (:mod:`rlhf_jax.lora`; ``targets`` are our Dense module names or their Hugging Face
  aliases). Disabled by default."""

  enabled: bool = False
  rank: int = 8
  alpha: float = 16.0
  targets: Tuple[str, ...] = ("q", "v")


def lora_errors(cfg: LoraConfig, field: str = "config.lora") -> List[str]:
  """Problems in a ``lora`` block that need no model (bounds, known target names), one line
  per problem naming ``field``; a name that the loaded model lacks is refused when the
  adapters are made (:func:`lora_spec`, :func:`rlhf_jax.lora.target_paths`)."""
  if not cfg.enabled:
    return []
  errors = []
  try:
    lora.LoraSpec(cfg.rank, cfg.alpha, tuple(cfg.targets))
  except ValueError as e:
    errors.append(str(e).replace("LoraSpec.", f"{field}."))
  known = set(lora.TARGETS) | set(lora.TARGET_ALIASES)
  for t in cfg.targets:
    if "/" not in t and t not in known:
      errors.append(
        f"{field}.targets: unknown module {t!r}; expected names from {list(lora.TARGETS)} or "
        f"their Hugging Face aliases {sorted(lora.TARGET_ALIASES)}"
      )
  return errors


def lora_spec(cfg: LoraConfig, field: str = "config.lora") -> Optional[lora.LoraSpec]:
  """The :class:`rlhf_jax.lora.LoraSpec` of an enabled block, None when disabled.

  Raises:
    ConfigError: naming ``field`` and each problem.
  """
  errors = lora_errors(cfg, field)
  if errors:
    raise ConfigError("\n".join(errors))
  return lora.LoraSpec(cfg.rank, cfg.alpha, tuple(cfg.targets)) if cfg.enabled else None


def lora_trainable(spec: lora.LoraSpec, base, model, rng, mesh, dense=None, field="config.lora"):
  """Fresh LoRA adapters (B = 0) on ``base`` for ``model``, with the ``dense`` subtrees,
  placed on ``mesh`` like their kernels; a target the model lacks raises ``ConfigError``
  naming ``field``."""
  try:
    trainable = lora.init_lora_params(spec, base, rng, dense=dense)
  except ValueError as e:
    raise ConfigError(str(e).replace("LoraSpec.", f"{field}.")) from None
  return lora.shard_trainable(trainable, model, mesh)


def preset_config(name: str, vocab_size: int, **overrides) -> TransformerConfig:
  if name not in PRESETS:
    raise ValueError(f"model.preset={name!r}; known presets: {sorted(PRESETS)}")
  return TransformerConfig(vocab_size=vocab_size, **{**PRESETS[name], **overrides})


def build_mesh(spec: MeshSpec):
  return sharding.make_mesh(spec.data, spec.fsdp, spec.tensor)


def load_model(spec: ModelSpec, head: str, rng: jax.Array, mesh) -> Tuple[Transformer, Any]:
  """The module and its params, already sharded on ``mesh``.

  From ``spec.path``: weights of a Hugging Face-layout checkpoint; an LM checkpoint loaded
  with ``head="scalar"`` keeps its trunk and gets a fresh scalar head (reward/value models
  start from the base LM); ``head="both"`` adds a value head to an LM.
  """
  if not spec.path:
    cfg = preset_config(
      spec.preset,
      spec.vocab_size,
      head=head,
      dtype=spec.dtype,
      remat=spec.remat,
      scan_unroll=spec.scan_unroll,
      matmul_dtype=spec.matmul_dtype or None,
    )
    model = Transformer(cfg)
    init = boxed_init_fn(model)
    params, _ = sharding.init_sharded(init, rng, mesh=mesh)
    return model, params
  from rlhf_jax.models import hf  # local import: only needed for checkpoints

  if not os.path.isdir(spec.path):
    raise FileNotFoundError(f"model.path={spec.path!r} is not a directory")
  model, params = hf.from_pretrained(spec.path, dtype=spec.dtype)
  cfg = model.cfg.replace(
    remat=spec.remat, scan_unroll=spec.scan_unroll, matmul_dtype=spec.matmul_dtype or None
  )
  if cfg.head != head:
    cfg = cfg.replace(head=head)
    new_model = Transformer(cfg)
    fresh = init_params(new_model, rng)
    trunk = {k: v for k, v in params.items() if k not in ("lm_head", "score")}
    merged = dict(fresh)
    merged.update(trunk)
    if head in ("lm", "both") and "lm_head" in params:
      merged["lm_head"] = params["lm_head"]
    params = merged
    model = new_model
  else:
    model = Transformer(cfg)
  init = boxed_init_fn(model)
  shardings = sharding.params_shardings(init, rng, mesh=mesh)
  return model, sharding.shard_tree(params, shardings)


def shard_params(model: Transformer, params, mesh):
  """Place ``params`` on ``mesh`` by the model's logical axis rules."""
  init = boxed_init_fn(model)
  return sharding.shard_tree(
    params, sharding.params_shardings(init, jax.random.PRNGKey(0), mesh=mesh)
  )


def make_optimizer(
  spec: OptimSpec, total_steps: int
) -> Tuple[optax.GradientTransformation, Callable[[Any], Any]]:
  """``(optimizer, schedule)``; ``schedule(count)`` gives the learning rate for logging."""
  if spec.name not in ("adam", "adamw", "tf_adam"):
    raise ValueError(f"optimizer.name={spec.name!r}; expected 'adam', 'adamw' or 'tf_adam'")
  if spec.learning_rate <= 0:
    raise ValueError(f"optimizer.learning_rate must be > 0, got {spec.learning_rate}")
  total_steps = max(int(total_steps), 1)
  if spec.anneal:
    decay = optax.linear_schedule(spec.learning_rate, 0.0, max(total_steps - spec.warmup_steps, 1))
  else:
    decay = optax.constant_schedule(spec.learning_rate)
  if spec.warmup_steps:
    warm = optax.linear_schedule(0.0, spec.learning_rate, spec.warmup_steps)
    schedule = optax.join_schedules([warm, decay], [spec.warmup_steps])
  else:
    schedule = decay
  if spec.name == "tf_adam":
    tx = optim.tf_adam(schedule, b1=spec.b1, b2=spec.b2, eps=spec.eps)
  elif spec.name == "adamw":
    tx = optax.adamw(schedule, b1=spec.b1, b2=spec.b2, eps=spec.eps, weight_decay=spec.weight_decay)
  else:
    tx = optax.adam(schedule, b1=spec.b1, b2=spec.b2, eps=spec.eps)
  if spec.max_grad_norm:
    tx = optax.chain(optax.clip_by_global_norm(spec.max_grad_norm), tx)
  return tx, schedule


class DivergenceError(RuntimeError):
  """Training diverged: too many updates were skipped for a non-finite loss or gradient."""


def check_skipped(
  desc: str,
  skipped: int,
  updates_so_far: int,
  planned_updates: int,
  max_fraction: float,
  where: str,
) -> None:
  """Stops a run whose skipped (non-finite) updates exceed ``max_fraction`` of its planned
  updates: past that point the run cannot end below the fraction, and a state that keeps
  producing NaN (a corrupt or divergent one) would otherwise train on silently.

  Raises:
    DivergenceError: naming ``where`` (the step) and the counts.
  """
  skipped = int(skipped)
  if skipped > max_fraction * planned_updates:
    raise DivergenceError(
      f"{desc}: {skipped} of the {updates_so_far} updates so far were skipped for a "
      f"non-finite loss or gradient (at {where}), more than max_skipped_fraction="
      f"{max_fraction} of the run's {planned_updates} updates; the training has diverged "
      "(lower the learning rate, check the data, or start from an earlier checkpoint)"
    )


def check_output_paths(field: str, directories=(), files=()) -> None:
  """Refuses, before any work, output paths that collide with existing files: a directory
  to be written that is a file, or a file to be written that is a directory.

  Raises:
    FileExistsError: naming ``field`` (what decides the path) and the path.
  """
  for d in directories:
    if os.path.exists(d) and not os.path.isdir(d):
      raise FileExistsError(
        f"{field}: output directory {os.fspath(d)} exists and is a file; "
        "move it away or choose another workdir"
      )
  for f in files:
    if os.path.isdir(f):
      raise FileExistsError(
        f"{field}: output file {os.fspath(f)} exists and is a directory; "
        "move it away or choose another workdir"
      )


# Bounds of every OptimSpec field (see rlhf_jax.config_schema.check_bounds).
OPTIM_BOUNDS = {
  "learning_rate": "> 0",
  "warmup_steps": ">= 0",
  "b1": "in [0, 1)",
  "b2": "in [0, 1)",
  "eps": ">= 0",
  "weight_decay": ">= 0",
  "max_grad_norm": ">= 0",
}


# Bounds of the stop criterion every trainer config has.
SKIPPED_BOUNDS = {"max_skipped_fraction": "in [0, 1]"}

# Bounds of the loop fields of the trainers that log and checkpoint on a cadence.
LOOP_BOUNDS = {
  "log_every": ">= 1",
  "checkpoint_every": ">= 1",
  "keep_checkpoints": ">= 1",
  **SKIPPED_BOUNDS,
}

# Loop fields a rerun of a workdir may change (see rlhf_jax.main): logging, checkpoint
# cadence, layout, stop criterion.
LOOP_NEUTRAL_FIELDS = (
  "log_every",
  "checkpoint_every",
  "keep_checkpoints",
  "mesh",
  "max_skipped_fraction",
)


# The loop fields of a trainer config: logging and checkpoint cadence, stop criterion.
LOOP_FIELDS = ("log_every", "checkpoint_every", "keep_checkpoints", "max_skipped_fraction")


def config_kwargs(cfg: Any, *names: str) -> Dict[str, Any]:
  """``{name: cfg.<name>}``: fields a trainer config passes on, under the same names, to its
  training loop (e.g. ``*LOOP_FIELDS``)."""
  return {name: getattr(cfg, name) for name in names}


def spec_errors(
  cfg: Any, bounds=None, *, optimizers=(), meshes=(), models=(), root: str = "config"
) -> list:
  """Problems in a trainer config, as error lines naming each field: the ``bounds``
  (field -> bound, see :func:`rlhf_jax.config_schema.check_bounds`), optimizer names and
  bounds, mesh axis sizes (>= 1, or -1 for one axis), model presets."""
  errors = config_schema.check_bounds(cfg, bounds, root) if bounds else []
  for name in optimizers:
    spec = _get(cfg, name)
    if spec.name not in ("adam", "adamw", "tf_adam"):
      errors.append(f"{root}.{name}.name={spec.name!r}: expected 'adam', 'adamw' or 'tf_adam'")
    errors += config_schema.check_bounds(
      cfg, {f"{name}.{k}": v for k, v in OPTIM_BOUNDS.items()}, root
    )
  for name in meshes:
    spec = _get(cfg, name)
    sizes = {"data": spec.data, "fsdp": spec.fsdp, "tensor": spec.tensor}
    for axis, size in sizes.items():
      if size == 0 or size < -1:
        errors.append(f"{root}.{name}.{axis}={size}: expected a size >= 1, or -1 (the rest)")
    if list(sizes.values()).count(-1) > 1:
      errors.append(f"{root}.{name}: at most one axis may be -1, got {sizes}")
  for name in models:
    spec = _get(cfg, name)
    if not spec.path and spec.preset not in PRESETS:
      errors.append(f"{root}.{name}.preset={spec.preset!r}: expected one of {sorted(PRESETS)}")
    if not spec.path and spec.vocab_size < 1:
      errors.append(f"{root}.{name}.vocab_size={spec.vocab_size}: expected >= 1")
  return errors


def _get(cfg: Any, dotted: str) -> Any:
  for part in dotted.split("."):
    cfg = getattr(cfg, part)
  return cfg


def check_batch_sizes(mesh, sizes) -> None:
  """Batches are split over the mesh's ``data`` x ``fsdp`` devices: refuses, at start-up,
  batch sizes they do not divide (``sizes``: config field -> batch size).

  Raises:
    ValueError: naming every offending field and the device count.
  """
  n = int(mesh.shape["data"]) * int(mesh.shape["fsdp"])
  bad = [f"{field}={size}" for field, size in sizes.items() if size % n]
  if bad:
    raise ValueError(
      f"{', '.join(bad)}: must be divisible by the {n} devices of the mesh's "
      "batch axes (data x fsdp); change the batch size or config.mesh"
    )


class TrainLoop:
  """The plumbing of a training loop in ``workdir``: checkpoints in ``workdir/checkpoints``
  (resume from the newest; save every ``every`` steps, at the last one, ``total``, and on a
  stop), metrics in ``workdir/metrics.jsonl``, a progress bar, the SIGTERM guard and the
  divergence check. ``key`` names the loop's step (``"step"``, ``"iteration"``) in the saved
  extra data and in messages, ``unit`` on the bar; a step makes ``updates_per_step``
  optimizer updates.

  Use::

      loop = TrainLoop(workdir, keep, every, total, desc)
      state, start = loop.restore(state)
      with loop:
        for i in range(start, total):
          ...
          loop.log(i + 1, host_metrics, loss=...)   # on logging steps
          if loop.end_step(i + 1, state):
            break
      loop.close()                                   # raises Preempted after a signal
  """

  def __init__(
    self,
    workdir,
    keep: int,
    every: int,
    total: int,
    desc: str,
    *,
    key: str = "step",
    unit: str = "step",
    max_skipped_fraction: float = 0.1,
    updates_per_step: int = 1,
  ):
    self.workdir = os.fspath(workdir)
    distributed.lead_only(lambda: os.makedirs(self.workdir, exist_ok=True), f"{desc}: workdir")
    self.manager = checkpoint.open_manager(
      os.path.join(self.workdir, "checkpoints"), max_to_keep=keep
    )
    self.every, self.total, self.desc, self.key, self.unit = every, total, desc, key, unit
    self.max_skipped_fraction, self.updates_per_step = max_skipped_fraction, updates_per_step
    self.start = self.done = 0
    self.preempted = False

  def restore(self, state) -> Tuple[Any, int]:
    """``(state, start)``: the newest checkpoint and its step, or ``(state, 0)``."""
    if checkpoint.latest_step(self.manager) is not None:
      state, extra = checkpoint.restore(self.manager, checkpoint.abstract_like(state))
      self.start = self.done = int(extra[self.key])
      _log.info("%s: resumed from %s %d", self.desc, self.key, self.start)
    return state, self.start

  def __enter__(self) -> "TrainLoop":
    self.writer = MetricWriter(self.workdir, resume_step=self.start).__enter__()
    self.guard = checkpoint.PreemptionGuard().__enter__()
    self.bar = progress(self.total, desc=self.desc, unit=self.unit)
    self.bar.update(self.start)
    return self

  def __exit__(self, *exc) -> None:
    self.bar.close()
    self.guard.__exit__(*exc)
    self.writer.__exit__(*exc)

  def log(self, done: int, host: Dict[str, Any], **postfix) -> None:
    """Writes the metrics of step ``done``, shows ``postfix`` on the bar and stops a run
    whose skipped updates exceed ``max_skipped_fraction`` (see :func:`check_skipped`)."""
    self.writer.write(done, host)
    self.bar.set_postfix(**postfix)
    check_skipped(
      self.desc,
      host["skipped_updates"],
      done * self.updates_per_step,
      self.total * self.updates_per_step,
      self.max_skipped_fraction,
      f"{self.key} {done}",
    )

  def end_step(self, done: int, state, stop: bool = False) -> bool:
    """Ends step ``done``: saves ``state`` when a checkpoint is due (waiting for the write
    when the loop stops); true when it stops (``stop``, or a signal)."""
    self.done = done
    self.bar.update(1, wait=lambda: jax.block_until_ready(state))  # count finished steps
    self.preempted = self.guard.should_stop()
    stop = stop or self.preempted
    if done % self.every == 0 or done == self.total or stop:
      checkpoint.save(self.manager, done, state, extra={self.key: done}, force=True, wait=stop)
    return stop

  def close(self) -> None:
    """Waits for the pending writes; a loop a signal stopped raises ``Preempted``."""
    self.manager.wait_until_finished()
    self.manager.close()
    if self.preempted:
      raise checkpoint.Preempted(
        f"{self.desc}: stopped by a signal at {self.key} {self.done} of {self.total}; "
        "checkpoint saved, rerun to resume"
      )


def run_epochs(
  step: Callable,
  state,
  data: Dict[str, np.ndarray],
  loop: TrainLoop,
  *,
  epochs: int,
  batch_size: int,
  seed: int,
  mesh,
  schedule: Callable,
  log_every: int,
  postfix: Dict[str, str],
  on_restore: Optional[Callable[[int], None]] = None,
) -> Tuple[Any, Dict[str, Any]]:
  """``epochs`` passes of ``step(state, batch) -> (state, metrics)`` over the rows of
  ``data`` (arrays ``[N, ...]``) in batches of ``batch_size``, inside ``loop`` (a fresh
  :class:`TrainLoop` with ``loop.total`` = epochs × ``N // batch_size``): restores the
  newest checkpoint (then calls ``on_restore(start)``), skips the steps done, and closes the
  loop (raising ``Preempted`` after a signal). Each epoch draws a new permutation from
  ``seed`` (drawn for every epoch, so a resumed run sees the same order) and drops its last
  partial batch. Every process draws the same permutation and reads only the rows of each
  batch that its devices hold (:func:`rlhf_jax.sharding.shard_rows`), so the global batches
  do not depend on the number of processes. Every ``log_every`` steps and at the last one the metrics (with the
  ``learning_rate`` of ``schedule``) are logged, ``postfix`` mapping bar labels to metric
  names. Returns the state and the last logged metrics."""
  state, start = loop.restore(state)
  if on_restore is not None:
    on_restore(start)
  n = len(next(iter(data.values())))
  steps_per_epoch = n // batch_size
  rng = np.random.default_rng(seed)
  i, last = 0, {}
  with loop:
    for _ in range(epochs):
      perm = rng.permutation(n)
      for s in range(steps_per_epoch):
        i += 1
        if i <= start:
          continue
        rows = perm[s * batch_size : (s + 1) * batch_size]
        batch = sharding.shard_rows(data, rows, mesh)  # this process's rows only
        state, metrics = step(state, batch)
        if i % log_every == 0 or i == loop.total:
          last = dict(fetch(metrics), learning_rate=float(schedule(i)))
          loop.log(i, last, **{label: last[name] for label, name in postfix.items()})
        if loop.end_step(i, state):
          break
      if loop.preempted:
        break
  loop.close()
  return state, last


def batches(n: int, size: int):
  """``(start, end)`` of consecutive batches of ``size`` rows over ``n`` (the last may be
  short)."""
  for start in range(0, n, size):
    yield start, min(start + size, n)


def pad_rows(x: np.ndarray, size: int) -> np.ndarray:
  """Pad the leading dim up to ``size`` by repeating the first row (fixed compiled shapes)."""
  if len(x) == size:
    return x
  return np.concatenate([x, np.repeat(x[:1], size - len(x), axis=0)], axis=0)


def pair_outputs(
  fn: Callable, params, pairs: Dict[str, np.ndarray], batch_size: int, mesh
) -> Tuple[np.ndarray, np.ndarray]:
  """``(out_a, out_b)`` ``[N]`` of a jitted ``fn(params, batch) -> (a [B], b [B])`` over
  every pair of ``pairs`` (arrays ``[N, ...]``, all passed to ``fn``), on the host, in
  fixed-size batches (one compilation; the last batch padded, its padding dropped)."""
  n = len(next(iter(pairs.values())))
  out_a, out_b = [], []
  for s, e in batches(n, batch_size):
    rows = {key: pad_rows(v[s:e], batch_size) for key, v in pairs.items()}
    a, b = sharding.to_host(fn(params, sharding.shard_global_batch(rows, mesh)))
    out_a.append(a[: e - s])
    out_b.append(b[: e - s])
  return np.concatenate(out_a), np.concatenate(out_b)
