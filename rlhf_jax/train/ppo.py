"""The PPO training loop: the only Python loop around the compiled PPO iteration.

``train_ppo(...)`` takes models, params and tokenised prompts as explicit arguments (the
pipeline calls it directly); ``run(cfg, workdir)`` is the config-driven entry used by
``python -m rlhf_jax.main --config configs/ppo.py``.

Per iteration: a deterministic choice of prompt rows (a function of seed and iteration, so
a resumed run sees the same data without iterator state), one call of the jitted iteration
(state donated), metrics fetched only on logging steps, an asynchronous checkpoint every
``checkpoint_every`` iterations and on SIGTERM.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import data as data_lib
from rlhf_jax import ppo as ppo_lib
from rlhf_jax import sharding
from rlhf_jax.advantages import fit_reward_normalization
from rlhf_jax.models import Transformer
from rlhf_jax.train import common
from rlhf_jax.train.metrics import fetch, progress, read_metrics

__all__ = [
  "PromptSpec",
  "Config",
  "check_config",
  "train_ppo",
  "fit_reward_norm",
  "reward_source_errors",
  "load_reward_scorer",
  "text_decoder",
  "scorer_score_fn",
  "run",
  "prompt_rows",
  "schedule_kwargs",
]

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PromptSpec:
  source: str = "random"  # "random" (benchmarks) | "jsonl" (one {"prompt": ...} per line)
  path: Optional[str] = None
  field: str = "prompt"
  prompt_len: int = 32
  num_random: int = 1024


@dataclasses.dataclass(frozen=True)
class Config:
  policy: common.ModelSpec = common.ModelSpec()
  reward: common.ModelSpec = common.ModelSpec()
  value_init: str = "reward"  # "reward" | "zero"   (the value model's initial params)
  # "model": the reward model above; or a scorer scoring the decoded text on the host (RLVR):
  # a built-in name (rlhf_jax.feedback.scorers) or "module:function"; needs policy.path's
  # tokenizer, and value_init="zero" for ppo with a separate value model.
  reward_source: str = "model"
  ppo: ppo_lib.PPOHparams = ppo_lib.PPOHparams()
  optimizer: common.OptimSpec = common.OptimSpec()
  mesh: common.MeshSpec = common.MeshSpec()
  prompts: PromptSpec = PromptSpec()
  batch_size: int = 64
  iterations: int = 10
  init_kl_coef: float = 0.15
  normalize_reward: bool = True
  norm_samples: int = 256
  seed: int = 0
  log_every: int = 1
  checkpoint_every: int = 10
  keep_checkpoints: int = 3
  max_skipped_fraction: float = 0.1  # stop when more updates are skipped as non-finite
  # LoRA policy on the frozen policy checkpoint, which is also the reference (one copy); the
  # value model is adapters + a zero head on it with value_init="zero", else dense from reward.
  lora: common.LoraConfig = common.LoraConfig()


# Fields a rerun of a workdir may change (see rlhf_jax.main): those of the loop.
RESULT_NEUTRAL_FIELDS = common.LOOP_NEUTRAL_FIELDS

_BOUNDS = {
  "batch_size": ">= 1",
  "iterations": ">= 1",
  "init_kl_coef": ">= 0",
  "norm_samples": ">= 1",
  "prompts.prompt_len": ">= 1",
  "prompts.num_random": ">= 1",
  "ppo.top_k": ">= 0",
  "ppo.top_p": "in (0, 1]",
  "ppo.kl_target": "> 0",
  "ppo.kl_horizon": "> 0",
  "ppo.gamma": "in [0, 1]",
  "ppo.lam": "in [0, 1]",
  "ppo.clip_eps": "> 0",
  "ppo.value_clip_eps": "> 0",
  "ppo.vf_coef": ">= 0",
  **common.LOOP_BOUNDS,
}


def check_config(cfg: Config) -> None:
  """Raises ``ConfigError`` naming every field of a PPO config that cannot run."""
  errors = common.spec_errors(
    cfg, _BOUNDS, optimizers=("optimizer",), meshes=("mesh",), models=("policy", "reward")
  )
  errors += common.lora_errors(cfg.lora)
  if cfg.batch_size >= 1 and cfg.batch_size % cfg.ppo.num_minibatches:
    errors.append(
      f"config.batch_size={cfg.batch_size}: must be divisible by "
      f"config.ppo.num_minibatches={cfg.ppo.num_minibatches}"
    )
  if cfg.value_init not in ("reward", "zero"):
    errors.append(f"config.value_init={cfg.value_init!r}: expected 'reward' or 'zero'")
  errors += reward_source_errors(
    cfg.reward_source,
    cfg.ppo,
    cfg.value_init,
    field="config.reward_source",
    value_init_field="config.value_init",
  )
  if cfg.reward_source != "model" and not cfg.policy.path:
    errors.append(
      f"config.reward_source={cfg.reward_source!r}: a scorer reads text, so it needs the "
      "policy's tokenizer; set config.policy.path to a checkpoint directory with one"
    )
  if cfg.prompts.source not in ("random", "jsonl"):
    errors.append(f"config.prompts.source={cfg.prompts.source!r}: expected 'random' or 'jsonl'")
  if cfg.ppo.algorithm in ppo_lib.PREFERENCE_ALGORITHMS:
    errors.append(
      f"config.ppo.algorithm={cfg.ppo.algorithm!r}: this trainer learns from rollouts; DPO / "
      "IPO learn from preference pairs in the pipeline (task='pipeline', configs/dpo.py)"
    )
  if errors:
    raise common.ConfigError("\n".join(errors))


def reward_source_errors(
  source: str,
  hp: ppo_lib.PPOHparams,
  value_init: str,
  *,
  field: str,
  value_init_field: str,
  algorithm_field: str = "config.ppo.algorithm",
) -> List[str]:
  """Problems with a reward source (``"model"`` or a scorer spec) for ``hp``, naming ``field``.

  Only the spec's form is checked here; :func:`load_reward_scorer` loads and probes it.
  """
  from rlhf_jax.feedback import scorers as scorers_lib

  if source == "model":
    return []
  errors = []
  if source not in scorers_lib.BUILTIN_SCORERS and ":" not in source:
    errors.append(
      f"{field}={source!r}: expected 'model', a built-in scorer "
      f"({', '.join(sorted(scorers_lib.BUILTIN_SCORERS))}) or 'module:function'"
    )
  if hp.algorithm in ppo_lib.PREFERENCE_ALGORITHMS:
    errors.append(
      f"{field}={source!r} with {algorithm_field}={hp.algorithm!r}: DPO / IPO learn from "
      "the labelled pairs, not from a reward; use 'model' (the default)"
    )
  elif not hp.critic_free and not hp.shared_trunk and value_init == "reward":
    errors.append(
      f"{field}={source!r} with {value_init_field}='reward': the value model can start at "
      f"the reward model's head only when the reward model is the reward; set "
      f"{value_init_field}='zero' (or a critic-free algorithm)"
    )
  return errors


def load_reward_scorer(source: str, field: str):
  """The scorer of a reward source spec (None for ``"model"``), loaded and probed on a small
  batch. Raises ValueError naming ``field``."""
  if source == "model":
    return None
  from rlhf_jax.feedback import judges as judges_lib
  from rlhf_jax.feedback import scorers as scorers_lib

  try:
    scorer = scorers_lib.get_scorer(source)
  except (ValueError, judges_lib.JudgeSpecError) as e:
    raise ValueError(f"{field}: {e}") from None
  out = None
  try:
    out = np.asarray(scorer(["The day"], [" was good."]), np.float64)
  except Exception as e:  # any failure of user code on a valid probe
    raise ValueError(
      f"{field}={source!r}: calling it as scorer(prompts, responses) on a probe batch of 1 "
      f"failed: {type(e).__name__}: {e}"
    ) from e
  if out.shape != (1,) or not np.all(np.isfinite(out)):
    raise ValueError(
      f"{field}={source!r}: a scorer returns one finite number per response; got "
      f"{out.tolist()!r} for 1 response"
    )
  return scorer


def text_decoder(tokenizer):
  """``decode(ids_BL, mask_BL) -> list[str]``: each row's masked-in tokens as text, EOS
  dropped (the ``decode`` of :func:`rlhf_jax.ppo.host_scorer_score_fn`)."""
  eos = tokenizer.eos_token_id

  def decode(ids_BL, mask_BL) -> List[str]:
    out = []
    for toks, m in zip(np.asarray(ids_BL), np.asarray(mask_BL)):
      out.append(tokenizer.decode([int(t) for t, keep in zip(toks, m) if keep and int(t) != eos]))
    return out

  return decode


def scorer_score_fn(scorer, tokenizer, name: str) -> Optional[ppo_lib.ScoreFn]:
  """The iteration's ``score_fn`` for ``scorer`` on text decoded with ``tokenizer`` (None for
  no scorer: the reward model)."""
  if scorer is None:
    return None
  return ppo_lib.host_scorer_score_fn(scorer, text_decoder(tokenizer), name=name)


def prompt_rows(n_prompts: int, batch_size: int, iteration: int, seed: int) -> np.ndarray:
  """Rows used by ``iteration``: a fresh seeded draw without replacement (with replacement
  only when the prompt set is smaller than a batch)."""
  rng = np.random.default_rng([seed, iteration])
  return rng.choice(n_prompts, batch_size, replace=n_prompts < batch_size)


def fit_reward_norm(
  policy_model: Transformer,
  ref_params,
  reward_model: Optional[Transformer],
  reward_params,
  prompt_ids,
  prompt_mask,
  hp: ppo_lib.PPOHparams,
  n_samples: int,
  batch_size: int,
  mesh,
  seed: int,
  score_fn: Optional[ppo_lib.ScoreFn] = None,
) -> Tuple[float, float]:
  """OAI's reward normalisation: scores of reference-policy samples -> (gain, bias) giving
  mean 0 and std 1.

  The score is the reward model's, or ``score_fn``'s when given (the iteration's
  :data:`rlhf_jax.ppo.ScoreFn`, e.g. a host scorer; ``reward_model`` / ``reward_params`` may
  then be None): the same samples (seed, rows, keys) either way.

  When every reference sample scores the same (a 0/1 verifiable reward the base model never
  earns, say) there is no scale to fit: the gain is 1 and the bias centres the scores, with a
  warning.
  """
  score_fn = jax.jit(ppo_lib.make_sample_and_score(policy_model, reward_model, hp, score_fn))
  scores = []
  n_batches = max(1, -(-n_samples // batch_size))
  for i in progress(range(n_batches), desc="reward normalisation", unit="batch"):
    rows = prompt_rows(len(prompt_ids), batch_size, 10_000_000 + i, seed)
    batch = sharding.shard_global_batch({"ids": prompt_ids[rows], "mask": prompt_mask[rows]}, mesh)
    out = score_fn(
      ref_params,
      reward_params,
      batch["ids"],
      batch["mask"],
      jax.random.PRNGKey(seed + 7919 * (i + 1)),
    )
    scores.append(sharding.to_host(out.raw_score_B))
  scores = np.concatenate(scores)
  if not np.std(scores) > 0:
    _log.warning(
      "reward normalisation: all %d reference samples score %r; gain 1, bias %r",
      len(scores),
      float(scores[0]),
      -float(scores[0]),
    )
    return 1.0, -float(scores[0])
  gain, bias = fit_reward_normalization(scores)
  return float(gain), float(bias)


def train_ppo(
  *,
  policy_model: Transformer,
  policy_params,
  value_model: Optional[Transformer],
  value_params,
  reward_model: Optional[Transformer],
  reward_params,
  ref_params,
  prompt_ids: np.ndarray,
  prompt_mask: np.ndarray,
  hp: ppo_lib.PPOHparams,
  optim_spec: common.OptimSpec,
  batch_size: int,
  iterations: int,
  init_kl_coef: float,
  reward_gain: float,
  reward_bias: float,
  mesh,
  seed: int,
  workdir: str,
  log_every: int = 1,
  checkpoint_every: int = 10,
  keep_checkpoints: int = 3,
  desc: str = "ppo",
  stop_after: Optional[int] = None,
  max_skipped_fraction: float = 0.1,
  score_fn: Optional[ppo_lib.ScoreFn] = None,
) -> Tuple[ppo_lib.PPOState, List[Dict[str, float]]]:
  """Run ``iterations`` PPO iterations; resumes from ``workdir/checkpoints`` if present.

  The reward is ``reward_model`` at the last token, or ``score_fn`` when given
  (:func:`rlhf_jax.ppo.make_ppo_iteration`; e.g. :func:`rlhf_jax.ppo.host_scorer_score_fn`,
  with ``reward_model`` and ``reward_params`` None), normalised by ``reward_gain`` /
  ``reward_bias`` either way.

  LoRA: ``policy_params`` (and ``value_params``, and ``reward_params``) may be
  :class:`rlhf_jax.lora.LoraParams`; their frozen base is ``ref_params`` — the reference is
  the base with adapters off, held once (:class:`rlhf_jax.ppo.PPOFrozen`).

  Returns the final state and the logged metrics (one dict per logged iteration, those of
  earlier attempts included when resuming). The metrics also go to ``workdir/metrics.jsonl``
  and TensorBoard. ``stop_after=k`` ends this call after k iterations with a checkpoint
  (time-boxed jobs); calling again continues the same trajectory. SIGTERM saves a checkpoint
  and raises :class:`rlhf_jax.checkpoint.Preempted`.

  Raises:
    DivergenceError: more than ``max_skipped_fraction`` of the run's updates were skipped
      for a non-finite loss or gradient (names the iteration).
    rlhf_jax.checkpoint.Preempted: stopped by a signal after saving a checkpoint.
  """
  if batch_size % (hp.num_minibatches) or batch_size % jax.process_count():
    raise ValueError(
      f"batch_size={batch_size} must be divisible by ppo.num_minibatches="
      f"{hp.num_minibatches} and by the number of processes"
    )
  updates_per_iter = hp.epochs * hp.num_minibatches
  optimizer, schedule = common.make_optimizer(optim_spec, iterations * updates_per_iter)
  # The state is donated to each iteration: copy, so that the caller's arrays (which may
  # alias the reference or reward params) stay valid.
  params = {"policy": jax.tree.map(jnp.copy, policy_params)}
  if not hp.shared_trunk:
    params["value"] = jax.tree.map(jnp.copy, value_params)
  state = sharding.commit(
    ppo_lib.init_ppo_state(params, optimizer, init_kl_coef, jax.random.PRNGKey(seed)), mesh
  )
  frozen = sharding.commit(
    ppo_lib.PPOFrozen(
      ref_params, reward_params, jnp.float32(reward_gain), jnp.float32(reward_bias)
    ),
    mesh,
  )
  iteration = sharding.jit_step(
    ppo_lib.make_ppo_iteration(
      policy_model, value_model, reward_model, optimizer, hp, score_fn=score_fn
    ),
    state,
    mesh,
  )

  loop = common.TrainLoop(
    workdir,
    keep_checkpoints,
    checkpoint_every,
    iterations,
    desc,
    key="iteration",
    unit="iter",
    max_skipped_fraction=max_skipped_fraction,
    updates_per_step=updates_per_iter,
  )
  state, start = loop.restore(state)

  history: List[Dict[str, float]] = []
  with loop:
    if start and os.path.exists(loop.writer.path):  # the curve of the attempts before this one
      history = [
        dict({k: v for k, v in r.items() if k != "step"}, iteration=r["step"])
        for r in read_metrics(loop.writer.path, last_per_step=True)
      ]
    t_last = time.perf_counter()
    for it in range(start, iterations):
      rows = prompt_rows(len(prompt_ids), batch_size, it, seed)  # the same in every process
      batch = sharding.shard_rows({"ids": prompt_ids, "mask": prompt_mask}, rows, mesh)
      state, metrics = iteration(state, frozen, batch["ids"], batch["mask"])
      done = it + 1
      if done % log_every == 0 or done == iterations:
        host = fetch(metrics)
        now = time.perf_counter()
        host["iteration_seconds"] = (now - t_last) / (done % log_every or log_every)
        host["samples_per_second"] = batch_size / host["iteration_seconds"]
        host["learning_rate"] = float(schedule(done * updates_per_iter))
        t_last = now
        loop.log(done, host, score=host["score"], kl=host["kl"], beta=host["beta"])
        history.append(dict(host, iteration=done))
      if loop.end_step(done, state, stop_after is not None and done - start >= stop_after):
        _log.warning("%s: stopping early; checkpoint saved at iteration %d", desc, done)
        break
  loop.close()
  return state, history


def schedule_kwargs(spec) -> Dict[str, Any]:
  """:func:`train_ppo`'s optimizer and length arguments from a config with the fields
  ``optimizer``, ``batch_size``, ``iterations`` and ``init_kl_coef`` (:class:`Config`, or the
  pipeline's PPO stage spec)."""
  return {
    "optim_spec": spec.optimizer,
    "batch_size": spec.batch_size,
    "iterations": spec.iterations,
    "init_kl_coef": spec.init_kl_coef,
  }


def _load_prompts(spec: PromptSpec, tokenizer, vocab_size: int, pad_id: int, seed: int):
  if spec.source == "random":
    rng = np.random.default_rng(seed)
    # Random ids that avoid the special tokens (0 and 1 are EOS/PAD by default).
    ids = rng.integers(2, vocab_size, (spec.num_random, spec.prompt_len)).astype(np.int32)
    return ids, np.ones_like(ids)
  if spec.source != "jsonl":
    raise ValueError(f"prompts.source={spec.source!r}; expected 'random' or 'jsonl'")
  if not spec.path or not os.path.isfile(spec.path):
    raise FileNotFoundError(f"prompts.path={spec.path!r} is not a file")
  if tokenizer is None:
    raise ValueError(
      "prompts.source='jsonl' needs a tokenizer: set policy.path to a "
      "checkpoint directory that contains tokenizer files"
    )
  texts = []
  for loc, record in data_lib.read_jsonl(spec.path):
    if not isinstance(record, dict) or not isinstance(record.get(spec.field), str):
      raise ValueError(f"{loc}: expected an object with a string field {spec.field!r}")
    texts.append(record[spec.field])
  if not texts:
    raise ValueError(f"{spec.path}: no prompts found")
  return encode_left_padded(tokenizer, texts, spec.prompt_len, pad_id)


def encode_left_padded(tokenizer, texts, length: int, pad_id: int):
  """Token ids ``[N, length]`` left-padded with ``pad_id`` (long prompts keep their end)."""
  ids = np.full((len(texts), length), pad_id, np.int32)
  mask = np.zeros((len(texts), length), np.int32)
  for i, text in enumerate(texts):
    toks = tokenizer.encode(text, add_special_tokens=False)[-length:]
    if toks:
      ids[i, length - len(toks) :] = toks
      mask[i, length - len(toks) :] = 1
  return ids, mask


def run(cfg: Config, workdir: str) -> Dict[str, Any]:
  """Config-driven PPO: load or initialise the four models, normalise the reward, train."""
  check_config(cfg)
  common.check_output_paths(
    "workdir", [os.path.join(workdir, "checkpoints")], [os.path.join(workdir, "metrics.jsonl")]
  )
  mesh = common.build_mesh(cfg.mesh)
  common.check_batch_sizes(mesh, {"config.batch_size": cfg.batch_size})
  rng = jax.random.PRNGKey(cfg.seed)
  k_policy, k_value, k_reward = jax.random.split(rng, 3)
  policy_head = "both" if cfg.ppo.shared_trunk else "lm"
  policy_model, policy_params = common.load_model(cfg.policy, policy_head, k_policy, mesh)
  scorer = load_reward_scorer(cfg.reward_source, "config.reward_source")
  hp = cfg.ppo
  # A scorer reward needs the reward model's module only as the value model's trunk.
  needs_rm = scorer is None or not (hp.critic_free or hp.shared_trunk)
  reward_model, reward_params = (
    common.load_model(cfg.reward, "scalar", k_reward, mesh) if needs_rm else (None, None)
  )
  tokenizer = None
  if cfg.policy.path:  # "" or None: a preset, no tokenizer
    from rlhf_jax.models import hf

    tokenizer = hf.load_tokenizer(cfg.policy.path)
    hp = dataclasses.replace(
      hp, eos_id=int(tokenizer.eos_token_id), pad_id=int(tokenizer.pad_token_id)
    )
  score_fn = scorer_score_fn(scorer, tokenizer, "config.reward_source")
  ref_params = {k: v for k, v in policy_params.items() if k != "score"}
  lora = common.lora_spec(cfg.lora)
  if lora is None:
    ref_params = jax.tree.map(jnp.copy, ref_params)
  else:  # adapters (+ the value head of a shared trunk) on the reference itself
    head = {"score": policy_params["score"]} if hp.shared_trunk else None
    key = jax.random.fold_in(k_policy, 1)
    policy_params = common.lora_trainable(lora, ref_params, policy_model, key, mesh, head)
  prompt_ids, prompt_mask = _load_prompts(
    cfg.prompts, tokenizer, policy_model.cfg.vocab_size, hp.pad_id, cfg.seed
  )
  gain, bias = 1.0, 0.0
  if cfg.normalize_reward:
    ref_model = Transformer(policy_model.cfg.replace(head="lm"))
    gain, bias = fit_reward_norm(
      ref_model,
      ref_params,
      reward_model,
      reward_params,
      prompt_ids,
      prompt_mask,
      dataclasses.replace(hp, shared_trunk=False),
      cfg.norm_samples,
      cfg.batch_size,
      mesh,
      cfg.seed,
      score_fn=score_fn,
    )
  value_model, value_params = None, None
  if lora is not None and not hp.shared_trunk and not hp.critic_free and cfg.value_init == "zero":
    value_model = Transformer(policy_model.cfg.replace(head="scalar", scalar_bias=True))
    d = policy_model.cfg.d_model
    head = {"score": {"kernel": jnp.zeros((d, 1), jnp.float32), "bias": jnp.zeros((1,))}}
    key = jax.random.fold_in(k_value, 1)
    value_params = common.lora_trainable(lora, ref_params, value_model, key, mesh, head)
  elif not hp.shared_trunk and not hp.critic_free:
    # Started at the normalised reward (or a zero head): the returns' units.
    value_model, value_params = ppo_lib.init_value_from_reward(
      reward_model, reward_params, gain, bias, cfg.value_init
    )
  if score_fn is not None:  # the iteration scores with the scorer; no reward model in it
    reward_model, reward_params = None, None
  state, history = train_ppo(
    policy_model=policy_model,
    policy_params=policy_params,
    value_model=value_model,
    value_params=value_params,
    reward_model=reward_model,
    reward_params=reward_params,
    ref_params=ref_params,
    prompt_ids=prompt_ids,
    prompt_mask=prompt_mask,
    hp=hp,
    **schedule_kwargs(cfg),
    reward_gain=gain,
    reward_bias=bias,
    mesh=mesh,
    seed=cfg.seed,
    workdir=workdir,
    **common.config_kwargs(cfg, *common.LOOP_FIELDS),
    score_fn=score_fn,
  )
  return history[-1] if history else {}
