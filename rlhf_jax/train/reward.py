"""Reward-model training loop (``task = "reward"``) and its evaluation.

``train_reward_model(...)`` takes tokenised pairs as arrays (the pipeline calls it
directly); ``run(cfg, workdir)`` reads preference records (JSONL or the column layout of
Hugging Face preference datasets, see :mod:`rlhf_jax.data.preferences`), tokenises them with
the tokenizer of ``model.path``, trains a scalar-head model initialised from that
checkpoint's trunk, evaluates it on a held-out split (accuracy, tie accuracy, expected
calibration error, score distribution) and writes it in Hugging Face layout
(``*ForSequenceClassification``) to ``workdir/model``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import data as data_lib
from rlhf_jax import evaluation, losses, sharding
from rlhf_jax import lora as lora_lib
from rlhf_jax import reward as reward_lib
from rlhf_jax.models import Transformer, boxed_init_fn, init_params
from rlhf_jax.train import common
from rlhf_jax.train.metrics import MetricWriter, truncate_metrics

__all__ = [
  "Config",
  "check_config",
  "run",
  "train_reward_model",
  "evaluate_reward_model",
  "tokenize_pairs",
]


@dataclasses.dataclass(frozen=True)
class Config:
  model: common.ModelSpec = common.ModelSpec()  # model.path: base LM (+ tokenizer) to start from
  preferences: str = ""  # JSONL / JSON / parquet file of preference records
  heldout_fraction: float = 0.1
  prompt_len: int = 64
  response_len: int = 64
  hparams: reward_lib.RewardHparams = reward_lib.RewardHparams()
  optimizer: common.OptimSpec = common.OptimSpec(
    name="adamw", learning_rate=5e-5, warmup_steps=10, eps=1e-8
  )
  mesh: common.MeshSpec = common.MeshSpec()
  epochs: int = 1
  batch_size: int = 32
  seed: int = 0
  max_skipped_fraction: float = 0.1  # stop when more updates are skipped as non-finite
  lora: common.LoraConfig = common.LoraConfig()  # adapters + a scalar head on the frozen base
  # std of the fresh scalar head: None 1/sqrt(d + 1); 0.0 a zero head (scores start equal)
  head_init_std: Optional[float] = None


# Fields a rerun of a workdir may change (see rlhf_jax.main): layout, stop criterion.
RESULT_NEUTRAL_FIELDS = ("mesh", "max_skipped_fraction")

_BOUNDS = {
  "heldout_fraction": "in (0, 1)",
  "prompt_len": ">= 1",
  "response_len": ">= 1",
  "epochs": ">= 1",
  "batch_size": ">= 1",
  "hparams.center_coef": ">= 0",
  "head_init_std": ">= 0",
  **common.SKIPPED_BOUNDS,
}


def check_config(cfg: Config) -> None:
  """Refuses a reward-model config that cannot run: ``ConfigError`` names each field."""
  errors = common.spec_errors(cfg, _BOUNDS, optimizers=("optimizer",), meshes=("mesh",))
  errors += common.lora_errors(cfg.lora)
  if not cfg.model.path:
    errors.append(
      "config.model.path: required; the reward trainer starts from a checkpoint "
      "directory (base LM and tokenizer)"
    )
  if not cfg.preferences:
    errors.append(
      "config.preferences: required; a preference file (.jsonl, .json, .parquet) "
      "or a Hugging Face dataset directory"
    )
  if errors:
    raise common.ConfigError("\n".join(errors))


def train_reward_model(
  model: Transformer,
  base_params,
  pairs: Dict[str, np.ndarray],
  eval_pairs: Optional[Dict[str, np.ndarray]],
  *,
  hp: reward_lib.RewardHparams,
  optim_spec: common.OptimSpec,
  epochs: int,
  batch_size: int,
  mesh,
  seed: int,
  workdir: Union[str, os.PathLike],
  checkpoint_every: int = 500,
  keep_checkpoints: int = 2,
  max_skipped_fraction: float = 0.1,
  desc: str = "reward model",
  lora: Optional[lora_lib.LoraSpec] = None,
  responses_per_prompt: int = 2,
  eval_groups: Optional[Sequence[str]] = None,
  head_init_std: Optional[float] = None,
) -> Tuple[Any, dict]:
  """A fresh scalar-head model on the trunk of ``base_params``, trained on ``pairs``.

  ``pairs``: ``ids_a, mask_a, ids_b, mask_b`` ``[N, T]`` and ``label`` ``[N]``. Returns the
  trained model params and the held-out evaluation (empty without ``eval_pairs``;
  ``eval_groups``, one name per held-out pair, adds the accuracy per group).
  Checkpoints go to ``workdir/checkpoints`` every ``checkpoint_every`` steps, at the end and
  on SIGTERM; a call with the same arguments resumes (a finished run only re-evaluates).

  ``responses_per_prompt`` K > 2: ``pairs`` are groups of ``K(K-1)/2`` consecutive pairs
  comparing one prompt's K responses (:func:`rlhf_jax.reward.group_pairs`); each step then
  takes ``2 * batch_size / K`` whole groups, scoring each response once — the same
  ``2 * batch_size`` sequences a pair step scores, but ``batch_size * (K - 1)`` comparisons
  instead of ``batch_size``. Epochs, shuffling and checkpoints run over groups.

  ``head_init_std``: the std of the fresh scalar head (None: ``model.cfg.scalar_init_std``;
  0.0: a zero head, so every score starts at 0 and the first preferences the model holds are
  the labels'). With the default 1/sqrt(d + 1) a random projection of the trunk's features
  already ranks responses by whatever it happens to align with — on SmolLM2 by as much as the
  labels move it in a short LoRA run.

  With ``lora`` the model is LoRA adapters and a fresh scalar head on the frozen
  ``base_params`` (an input of every step; never copied or changed), and the returned
  params are that :class:`rlhf_jax.lora.LoraParams` (its model params:
  ``lora.full_params(params, base_params)``).

  Raises:
    DivergenceError: more than ``max_skipped_fraction`` of the updates were non-finite.
    rlhf_jax.checkpoint.Preempted: stopped by a signal after saving a checkpoint.
  """
  k = jax.random.PRNGKey(seed)
  init_model = model
  if head_init_std is not None:
    init_model = Transformer(dataclasses.replace(model.cfg, scalar_init_std=head_init_std))
  params = dict(init_params(init_model, k))
  base = None
  if lora is not None:
    base = base_params
    head = {"score": params["score"]}
    params = common.lora_trainable(lora, base, model, jax.random.fold_in(k, 1), mesh, head)
  else:
    params.update({key: v for key, v in base_params.items() if key not in ("lm_head", "score")})
    init = boxed_init_fn(model)
    params = sharding.shard_tree(params, sharding.params_shardings(init, k, mesh=mesh))
    params = jax.tree.map(jnp.copy, params)  # the state is donated; keep the caller's trunk
  n = len(pairs["label"])
  rows, step_rows = pairs, batch_size  # what an epoch runs over, and a step takes
  if responses_per_prompt > 2:
    if (2 * batch_size) % responses_per_prompt:
      raise ValueError(
        f"reward training: batch_size={batch_size} scores {2 * batch_size} sequences a "
        f"step, not a whole number of groups of responses_per_prompt={responses_per_prompt}"
      )
    rows = reward_lib.group_pairs(pairs, responses_per_prompt)
    step_rows = 2 * batch_size // responses_per_prompt
  n_rows = len(rows["label"])
  if n_rows < step_rows:
    unit = "pairs" if rows is pairs else f"groups of {responses_per_prompt} responses"
    raise ValueError(f"reward training: {n_rows} {unit}, fewer than one step's {step_rows}")
  steps_per_epoch = n_rows // step_rows
  total = steps_per_epoch * epochs
  optimizer, schedule = common.make_optimizer(optim_spec, total)
  optimizer = reward_lib.reward_optimizer(optimizer, hp)
  state = sharding.commit(reward_lib.init_reward_state(params, optimizer, hp), mesh)
  step = sharding.jit_step(reward_lib.make_reward_step(model, optimizer, hp), state, mesh)
  if base is not None:  # the frozen base is an input of every step
    step = functools.partial(step, base=base)

  def drop_eval_rows(start: int) -> None:  # the evaluation rows are written again below
    if jax.process_index() == 0:
      truncate_metrics(workdir, start, drop=lambda r: any(k.startswith("eval_") for k in r))

  state, _ = common.run_epochs(
    step,
    state,
    rows,
    common.TrainLoop(
      workdir,
      keep_checkpoints,
      checkpoint_every,
      total,
      desc,
      max_skipped_fraction=max_skipped_fraction,
    ),
    epochs=epochs,
    batch_size=step_rows,
    seed=seed,
    mesh=mesh,
    schedule=schedule,
    log_every=20,
    postfix={"loss": "loss", "acc": "accuracy"},
    on_restore=drop_eval_rows,
  )
  scorer = jax.jit(reward_lib.make_pair_scorer(model))  # refit and evaluation share it
  merged = jax.jit(lora_lib.full_params)(state.params["model"], base)  # dense: the params
  tie_info = {}
  if hp.refit_tie_param and hp.tie_model != "bradley_terry":
    # Maximum-likelihood tie parameter at the scores the trained model gives its training
    # pairs: what the labels' tie rate says θ (ν) is, whatever the gradient steps reached.
    ra, rb = common.pair_outputs(scorer, merged, rows, step_rows, mesh)  # each sequence once
    ra, rb = ra.reshape(-1), rb.reshape(-1)  # grouped: [G, K(K-1)/2] -> the pairs' order
    learned = float(reward_lib.tie_parameter(state.params["tie"], hp.tie_model))
    fitted = float(losses.fit_tie_parameter(ra, rb, pairs["label"], hp.tie_model))
    params = dict(
      state.params, tie=jnp.asarray(reward_lib.raw_tie(fitted, hp.tie_model), jnp.float32)
    )
    state = state.replace(params=sharding.commit(params, mesh))
    p_tie = np.asarray(
      losses.preference_probs(
        ra, rb, hp.tie_model, reward_lib.tie_parameter(params["tie"], hp.tie_model)
      )[2]
    )
    tie_info = {
      "rm_tie_param_learned": learned,
      "rm_train_tie_rate_labels": float(np.mean(pairs["label"] == losses.LABEL_TIE)),
      "rm_train_tie_rate_implied": float(np.mean(p_tie)),
    }
  result = dict(tie_info)
  if eval_pairs is not None:
    result.update(
      evaluate_reward_model(
        model,
        dict(state.params, model=merged),
        hp,
        eval_pairs,
        batch_size,
        mesh,
        scorer=scorer,
        groups=eval_groups,
      )
    )
    with MetricWriter(workdir) as writer:
      writer.write(total, {"eval_" + key: v for key, v in result.items()})
  return state.params["model"], dict(
    result, rm_train_pairs=int(n), rm_skipped_updates=int(state.skipped_updates)
  )


def evaluate_reward_model(
  model: Transformer,
  params,
  hp: reward_lib.RewardHparams,
  eval_pairs: Dict[str, np.ndarray],
  batch_size: int,
  mesh,
  scorer=None,
  groups: Optional[Sequence[str]] = None,
) -> dict:
  """Held-out accuracy (decided pairs), tie accuracy (ties predicted as the most probable
  outcome), the tie rate of the labels against the model's mean P(tie) and its predicted
  tie rate, ECE of P(a > b | decided), scores. ``scorer``: a jitted
  ``reward.make_pair_scorer(model)`` to reuse (one is compiled when omitted). ``groups``
  (one name per pair, e.g. the prompt's category): also ``rm_accuracy_<name>`` and
  ``rm_decided_<name>`` (its decided pairs) for each name."""
  n = len(eval_pairs["label"])
  if scorer is None:
    scorer = jax.jit(reward_lib.make_pair_scorer(model))
  ra, rb = common.pair_outputs(scorer, params["model"], eval_pairs, batch_size, mesh)
  gold = np.asarray(eval_pairs["label"])
  decided = gold != losses.LABEL_TIE
  pred_a = ra > rb
  correct = np.where(gold == losses.LABEL_A, pred_a, ~pred_a)
  acc = float(np.mean(correct[decided])) if decided.any() else float("nan")
  tie = reward_lib.tie_parameter(params["tie"], hp.tie_model)
  p_a, p_b, p_tie = (
    np.asarray(x)
    for x in losses.preference_probs(
      ra, rb, hp.tie_model, None if hp.tie_model == "bradley_terry" else tie
    )
  )
  pred = np.argmax(np.stack([p_a, p_b, p_tie], 1), 1)
  ties = ~decided
  tie_acc = float(np.mean(pred[ties] == losses.LABEL_TIE)) if ties.any() else float("nan")
  p_win = p_a / np.maximum(p_a + p_b, 1e-12)
  ece = (
    evaluation.expected_calibration_error(
      p_win[decided], (gold[decided] == losses.LABEL_A).astype(float)
    )
    if decided.any()
    else float("nan")
  )
  scores = np.concatenate([ra, rb])
  by_group = {}
  if groups is not None:
    if len(groups) != n:
      raise ValueError(f"evaluate_reward_model: {len(groups)} group names for {n} pairs")
    names = np.asarray(groups)
    for name in sorted(set(groups)):
      mine = decided & (names == name)
      by_group[f"rm_accuracy_{name}"] = (
        float(np.mean(correct[mine])) if mine.any() else float("nan")
      )
      by_group[f"rm_decided_{name}"] = int(mine.sum())
  return by_group | {
    "rm_accuracy": acc,
    "rm_tie_accuracy": tie_acc,
    "rm_ece": float(ece),
    "rm_tie_rate_labels": float(np.mean(ties)),
    "rm_tie_rate_implied": float(np.mean(p_tie)),
    "rm_tie_rate_predicted": float(np.mean(pred == losses.LABEL_TIE)),
    "rm_eval_pairs": int(n),
    "rm_score_mean": float(np.mean(scores)),
    "rm_score_std": float(np.std(scores)),
    "rm_tie_param": float(tie),
  }


def tokenize_pairs(tokenizer, records, prompt_len: int, response_len: int) -> Dict[str, np.ndarray]:
  """Prompt left-padded to ``prompt_len`` + response right-padded (EOS appended) to
  ``response_len``, for both sides of each record — the layout PPO scores."""
  p_ids, p_mask = data_lib.encode_prompts(tokenizer, [r.prompt for r in records], prompt_len)
  out = {"label": np.asarray([r.label_index for r in records], np.int32)}
  for side in ("a", "b"):
    texts = [getattr(r, f"response_{side}") for r in records]
    r_ids, r_mask = data_lib.encode_texts(tokenizer, texts, response_len)
    out[f"ids_{side}"] = np.concatenate([p_ids, r_ids], 1).astype(np.int32)
    out[f"mask_{side}"] = np.concatenate([p_mask, r_mask], 1).astype(np.int32)
  return out


def run(cfg: Config, workdir: str) -> Dict[str, Any]:
  from rlhf_jax.models import hf

  check_config(cfg)
  common.check_output_paths(
    "workdir",
    [os.path.join(workdir, d) for d in ("model", "checkpoints")],
    [os.path.join(workdir, "metrics.jsonl")],
  )
  if not os.path.isdir(cfg.model.path):
    raise FileNotFoundError(f"config.model.path={cfg.model.path!r} is not a directory")
  try:  # errors in records name the file and line themselves
    records = data_lib.read_preferences(cfg.preferences)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"config.preferences: {e}") from None
  n_eval = max(1, int(round(cfg.heldout_fraction * len(records))))
  if len(records) - n_eval < cfg.batch_size:
    raise ValueError(
      f"config.batch_size={cfg.batch_size}: only {len(records) - n_eval} "
      f"training pairs in {cfg.preferences} after holding out {n_eval}"
    )
  mesh = common.build_mesh(cfg.mesh)
  common.check_batch_sizes(mesh, {"config.batch_size": cfg.batch_size})
  tokenizer = hf.load_tokenizer(cfg.model.path)
  perm = np.random.default_rng(cfg.seed).permutation(len(records))
  eval_records = [records[i] for i in perm[:n_eval]]
  train_records = [records[i] for i in perm[n_eval:]]
  pairs = tokenize_pairs(tokenizer, train_records, cfg.prompt_len, cfg.response_len)
  eval_pairs = tokenize_pairs(tokenizer, eval_records, cfg.prompt_len, cfg.response_len)
  base_model, base_params = hf.from_pretrained(cfg.model.path, dtype=cfg.model.dtype)
  model = Transformer(base_model.cfg.replace(head="scalar", remat=cfg.model.remat))
  lora = common.lora_spec(cfg.lora)
  if lora is not None:  # the frozen base, placed on the mesh once
    base_params = common.shard_params(base_model, base_params, mesh)
  params, result = train_reward_model(
    model,
    base_params,
    pairs,
    eval_pairs,
    hp=cfg.hparams,
    optim_spec=cfg.optimizer,
    mesh=mesh,
    workdir=workdir,
    **common.config_kwargs(
      cfg, "epochs", "batch_size", "seed", "max_skipped_fraction", "head_init_std"
    ),
    lora=lora,
  )
  lora_lib.save_merged(  # LoRA: adapters merged into the base, and the head
    model,
    params,
    base_params,
    os.path.join(workdir, "model"),
    tokenizer=tokenizer,
    pad_token_id=int(tokenizer.pad_token_id),
  )
  return result
