"""The whole RLHF loop, offline: corpus -> base model -> preferences -> reward model -> PPO.

Each stage is a public function with explicit inputs and outputs; :func:`run` is the loop
that calls them (each stage writes its outputs under ``workdir`` and a ``DONE`` marker; a
re-run skips finished stages and resumes an interrupted training stage from its checkpoint):

1. ``data/`` — :func:`prepare_data`: fetch an English corpus through the package managers,
   train a byte-level BPE tokenizer, cut sentence-opening prompts from held-out text, store
   corpus rows and prompts as TFDS datasets (array_record) read back through grain.
2. ``base/`` — :func:`pretrain_base`: pretrain a small causal LM on the packed corpus (or
   load ``base.path``); it is the reference policy and the initial policy, reward model and
   value model trunk. :func:`prepare_rounds` then samples the reference once on the
   evaluation prompts and draws the reward model's held-out pairs.
   ``sft/`` (``config.sft.steps > 0``, the assistant task) — :func:`demonstration_stage`:
   the base's answers to the training prompts, kept where they pass every check or revised
   by rule (:mod:`rlhf_jax.feedback.demonstrations`), and the base fine-tuned on them; that
   model is then the reference, the policy's start and the reward-model trunk, while the
   evaluation's "before" samples, win rates and perplexities stay against the starting
   checkpoint (:func:`sft_evaluation` scores the supervised model alone).
3. ``round_<r>/`` for r = 1..R — :func:`run_round` (or :func:`load_round` once finished):
   a. :func:`collect_pairs`: two responses per prompt from the current policy;
      :func:`label_stage`: labels from the configured feedback source (:func:`label_pairs`:
      simulated annotators on a gold scorer, an AI judge, people through the annotation
      queue, or any ``module:function`` judge);
   b. a reward model (from the base trunk) on all labels so far, evaluated against
      noise-free gold labels on held-out pairs (``train/reward.py``);
   c. :func:`policy_stage`: RL from the current policy against the fixed reference with that
      reward model, for any ``ppo.hparams.algorithm`` (a value model only when it has one),
      or DPO / IPO on the round's fresh pairs (``algorithm="dpo" | "ipo"``, ``config.dpo``);
   d. :func:`evaluate_policy`: win rate against the reference under the gold scorer and the
      independent judges, gold and proxy reward, KL to the reference, response length,
      degenerate text, fluency (perplexity under the reference), on
      ``eval.answers_per_prompt`` answers to each held-out prompt (intervals count prompts;
      every answer in ``round_<r>/eval_answers.jsonl``); for the assistant task also the
      per-category pass rates and the reward-model probes (:func:`assistant_metrics`,
      :func:`reward_refusal_probe`, :func:`reward_agreement_probe`).
4. ``report.md`` + plots in ``workdir`` — :func:`write_report`.

Across processes (``jax.distributed``; every process runs :func:`run` with the same config and
workdir, which must be one directory every process sees — the local disk for processes on
one machine, a shared filesystem such as NFS or GCS FUSE across hosts, as Orbax's collective
checkpoints need anyway): process 0 alone writes the workdir and the data cache (corpus
download, tokenizer training, TFDS datasets, labels, pairs, models, evaluations, metrics,
plots, report) and calls the judges and annotators; the others wait for it
(:func:`rlhf_jax.distributed.lead_only`), then read what it wrote, and receive the judges'
scores and stage decisions by broadcast (:func:`rlhf_jax.distributed.from_lead`). Device
work (sampling, training, scoring) and checkpoints are collective.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import pathlib
import time
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import checkpoint, distributed, evaluation, losses, ops, sharding
from rlhf_jax import data as data_lib
from rlhf_jax import dpo as dpo_lib
from rlhf_jax import lora as lora_lib
from rlhf_jax import ppo as ppo_lib
from rlhf_jax import reward as reward_lib
from rlhf_jax import sft as sft_lib
from rlhf_jax.feedback import judges as judges_lib
from rlhf_jax.feedback import scorers as scorers_lib
from rlhf_jax.feedback import simulated as simulated_lib
from rlhf_jax.models import Transformer, boxed_init_fn
from rlhf_jax.train import common
from rlhf_jax.train import dpo as dpo_train
from rlhf_jax.train import ppo as ppo_train
from rlhf_jax.train import report as report_lib
from rlhf_jax.train import reward as reward_train
from rlhf_jax.train import sft as sft_train
from rlhf_jax.train.metrics import MetricWriter, progress, truncate_metrics

__all__ = [
  "DataSpec",
  "BaseSpec",
  "FeedbackSpec",
  "RewardSpec",
  "PPOSpec",
  "DPOSpec",
  "EvalSpec",
  "Config",
  "check_config",
  "stage_errors",
  "load_scorers",
  "load_independent_judges",
  "probe_scorer",
  "probe_judge",
  "corpus_words",
  # stages, in order
  "prepare_data",
  "policy_hparams",
  "read_prompts",
  "load_prompts",
  "pretrain_base",
  "base_stage",
  "prepare_rounds",
  "sample_reference",
  "reward_eval_pairs",
  "collect_pairs",
  "label_pairs",
  "label_stage",
  "policy_and_value",
  "train_policy",
  "policy_stage",
  "reward_score_fn",
  "evaluate_policy",
  "run_round",
  "load_round",
  "write_report",
  "run",
  # the values passed between them, and their helpers
  "Models",
  "Sampler",
  "Prompts",
  "Reference",
  "SampledPairs",
  "PolicyResult",
  "Setup",
  "RoundResult",
  "decode_responses",
  "join_sequences",
  "pairs_arrays",
  "label_indices",
]

_log = logging.getLogger(__name__)

DATA_KINDS = ("corpus", "assistant")  # DataSpec.kind


def _default_cache() -> str:
  return os.environ.get(
    "RLHF_JAX_DATA", os.path.join(os.path.expanduser("~"), ".cache", "rlhf_jax")
  )


@dataclasses.dataclass(frozen=True)
class DataSpec:
  # "corpus": sentence openings of an English corpus, a BPE tokenizer trained on it;
  # "assistant": the chat prompts of rlhf_jax.data.assistant_prompts (seeded by the run's seed)
  # rendered with the checkpoint's chat template, no corpus and no tokenizer training.
  kind: str = "corpus"
  # kind="assistant": the checkpoint whose tokenizer and chat template the run uses (anything
  # rlhf_jax.models.gguf.resolve_checkpoint accepts); "" -> base.path.
  tokenizer: str = ""
  cache_dir: str = ""  # "" -> $RLHF_JAX_DATA or ~/.cache/rlhf_jax (downloads are reused)
  sources: Tuple[str, ...] = ("fortunes", "bible", "austen", "shakespeare")
  vocab_size: int = 8192
  seq_len: int = 64  # pretraining row width
  max_train_texts: int = 0  # 0: all training documents
  prompt_words: Tuple[int, int] = (3, 6)
  prompt_len: int = 16  # tokens, left-padded
  num_prompts: int = 4096  # training prompts (labels and PPO)
  num_eval_prompts: int = 256  # held-out prompts for evaluation and reward-model tests
  # kind="assistant": the prompt categories drawn, in equal shares (() -> all five of
  # rlhf_jax.data.assistant_prompts.CATEGORIES); configs/sycophancy.py draws only "premise"
  categories: Tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class BaseSpec:
  # A checkpoint to start from instead of pretraining: a directory, a .gguf file or a packaged
  # name such as "smollm2-135m-instruct" (rlhf_jax.models.gguf.resolve_checkpoint).
  path: Optional[str] = None
  preset: str = "gpt2-small"
  # 0: the preset at random init, untrained (the smoke base of data.kind="assistant")
  steps: int = 1000
  batch_size: int = 32
  optimizer: common.OptimSpec = common.OptimSpec(
    name="adamw",
    learning_rate=1e-3,
    warmup_steps=50,
    weight_decay=0.01,
    eps=1e-8,
    max_grad_norm=1.0,
  )


@dataclasses.dataclass(frozen=True)
class FeedbackSpec:
  source: str = "simulated"  # "simulated" | "ai_judge" | "human" | "module:function"
  gold_scorer: str = "vader_sentiment"  # the independent judge of evaluation
  labeller_scorer: str = ""  # simulated annotators' scorer ("" -> gold_scorer)
  temperature: float = 0.1  # simulated annotators: P(a > b) = sigmoid((g_a - g_b) / T)
  tie_threshold: float = 0.05  # ... a tie when |g_a - g_b| < threshold
  flip_prob: float = 0.05  # ... fraction of labels flipped at random
  pairs_per_round: int = 1024
  sample_temperature: float = 1.0
  # K responses to each chosen prompt and every one of their K(K-1)/2 pairs labelled
  # (InstructGPT's K-wise comparisons): pairs_per_round / (K(K-1)/2) prompts a round, and
  # the reward model scores each response once per step (rlhf_jax.reward.group_pairs).
  responses_per_prompt: int = 2
  human_queue_dir: str = ""  # "" -> workdir/annotation_queue
  human_timeout_s: float = 86400.0
  # source="human": the fraction of each round's pairs sent to people (the queue, served by
  # `python -m rlhf_jax.annotate serve --queue ...`); the rest are labelled at once by
  # human_mix_source ("simulated", "ai_judge" or a "module:function" judge).
  human_fraction: float = 1.0
  human_mix_source: str = "simulated"
  judge_model_path: str = ""  # ai_judge: a checkpoint directory
  judge_principles: Tuple[str, ...] = ("Prefer the response that is more positive and kind.",)
  # Simulated annotators of data.kind="assistant": the fraction of pairs labelled by agreement
  # with the user's claim instead of the gold score (premise pairs where exactly one response
  # agrees; rlhf_jax.feedback.assistant.agreement_preference). 0: unbiased.
  bias: float = 0.0
  # data.kind="assistant": each comparison group of a harmful request or a benign look-alike
  # is made to hold both a decline and an answer before it is labelled (the last sample
  # replaced by the supervised stage's decline, or by a non-declining answer of the starting
  # model; rlhf_jax.feedback.demonstrations.contrast_group), so every such label says when
  # declining is right.
  contrast_groups: bool = False


@dataclasses.dataclass(frozen=True)
class RewardSpec:
  hparams: reward_lib.RewardHparams = reward_lib.RewardHparams()
  epochs: int = 2
  batch_size: int = 32
  optimizer: common.OptimSpec = common.OptimSpec(
    name="adamw", learning_rate=1e-4, warmup_steps=10, eps=1e-8
  )
  # std of the fresh scalar head (None: 1/sqrt(d_model + 1); 0.0: a zero head, every score
  # 0 at the start; rlhf_jax.train.reward.train_reward_model)
  head_init_std: Optional[float] = None
  # With lora.enabled: True trains the reward model's whole trunk (dense fine-tuning, its own
  # copy of the weights and optimizer state for all of them) instead of adapters on the
  # frozen base; the policy (and value) keep their adapters. Without LoRA it changes nothing.
  dense: bool = False


@dataclasses.dataclass(frozen=True)
class PPOSpec:
  hparams: ppo_lib.PPOHparams = ppo_lib.PPOHparams(
    response_len=16, num_minibatches=4, epochs=4, temperature=0.7, kl_target=6.0
  )
  optimizer: common.OptimSpec = common.OptimSpec(learning_rate=1e-4)
  iterations: int = 20
  batch_size: int = 64
  init_kl_coef: float = 0.15
  norm_samples: int = 256
  value_init: str = "reward"  # "reward": normalised reward head | "zero": zero head
  # What the policy stage optimises: "model" (the round's reward model) or a scorer of the
  # decoded text, called on the host inside the compiled iteration (verifiable-reward RL,
  # RLVR): a built-in name (rlhf_jax.feedback.scorers, e.g. "vader_sentiment") or
  # "module:function", resolved like feedback.gold_scorer. Normalised on reference samples
  # like the reward model. The reward model is still trained each round (evaluation reports
  # its accuracy and proxy reward) but the policy never sees it. PPO with a separate value
  # model then needs value_init="zero"; DPO / IPO take no reward.
  reward_source: str = "model"
  # Responses end at this text's token once long enough (hparams.min_response_len), e.g.
  # "." as in OAI's sentiment run; "" for none. It must be one token of the run's tokenizer.
  stop_text: str = ""

  def __post_init__(self):
    if self.value_init not in ("reward", "zero"):
      raise ValueError(f"ppo.value_init={self.value_init!r}; expected 'reward' or 'zero'")


@dataclasses.dataclass(frozen=True)
class DPOSpec:
  """The policy stage of ``ppo.hparams.algorithm = "dpo" | "ipo"``: online (iterated) DPO.

  Each round trains the round's starting policy on that round's freshly labelled pairs
  (sampled from the previous round's policy), against the frozen base model as the reference
  — the model every round's KL is measured against, so the implicit KL penalty and the
  reported KL agree across rounds. The algorithm field picks the loss (``dpo``: the sigmoid
  loss, with ties through ``tie_model``; ``ipo``: IPO, which models ties itself); the
  response length, sampling temperature and stop token come from ``ppo.hparams`` as for the
  RL algorithms. See :class:`rlhf_jax.dpo.DPOHparams` for the fields.
  """

  beta: float = 0.1  # implicit reward β (log π - log π_ref); IPO's target gap is 1 / (2β)
  label_smoothing: float = 0.0  # conservative DPO's ε in [0, 0.5) (dpo only)
  tie_model: str = "bradley_terry"  # "bradley_terry" | "rao_kupper" | "davidson" (dpo only)
  tie_param: float = 1.5  # θ >= 1 (Rao-Kupper) or ν >= 0 (Davidson)
  learn_tie_param: bool = False
  tie_learning_rate: float = 0.05
  epochs: int = 2  # passes over the round's pairs
  batch_size: int = 32  # pairs per step
  optimizer: common.OptimSpec = common.OptimSpec(
    name="adamw", learning_rate=5e-5, warmup_steps=10, eps=1e-8, max_grad_norm=1.0
  )

  def hparams(self, algorithm: str) -> dpo_lib.DPOHparams:
    """The library settings for ``algorithm`` ("dpo" or "ipo"); raises ValueError naming the
    ``DPOHparams`` field on an invalid combination."""
    if algorithm not in ppo_lib.PREFERENCE_ALGORITHMS:
      raise ValueError(
        f"DPOSpec.hparams: algorithm={algorithm!r}; expected one of {ppo_lib.PREFERENCE_ALGORITHMS}"
      )
    return dpo_lib.DPOHparams(
      loss_type="ipo" if algorithm == "ipo" else "sigmoid",
      beta=self.beta,
      label_smoothing=self.label_smoothing,
      tie_model=self.tie_model,
      tie_param=self.tie_param,
      learn_tie_param=self.learn_tie_param,
      tie_learning_rate=self.tie_learning_rate,
    )


@dataclasses.dataclass(frozen=True)
class SFTSpec:
  """Supervised fine-tuning on demonstrations before the first round (``data.kind =
  "assistant"``): Constitutional AI's supervised stage with the task's programmatic checks as
  the critique (:mod:`rlhf_jax.feedback.demonstrations`). The base samples
  ``samples_per_prompt`` answers to every training prompt; an answer that passes every check,
  or else the first whose rule-based revision does, is the prompt's demonstration; the model
  is fine-tuned on them (LoRA adapters when ``lora.enabled``, then merged) and the result is
  the reference, the policy's start and the reward model's trunk. ``steps = 0``: no
  supervised stage, the base is all of these."""

  steps: int = 0
  batch_size: int = 16
  samples_per_prompt: int = 1
  # Rounds in which the prompts still without a demonstration are asked again (each
  # repeated to fill one sampling batch); 0: none.
  resample_rounds: int = 0
  temperature: float = 0.7  # of the base's answers that are revised
  optimizer: common.OptimSpec = common.OptimSpec(
    name="adamw", learning_rate=1e-3, warmup_steps=4, eps=1e-8, max_grad_norm=1.0
  )


@dataclasses.dataclass(frozen=True)
class EvalSpec:
  num_samples_in_report: int = 8
  # Held-out reward-model pairs per evaluation prompt, drawn like round 1's labelled pairs
  # (two reference samples at feedback.sample_temperature) and labelled by the gold scorer
  # without noise: 4 x 256 prompts gives the accuracy a standard error near 0.015.
  rm_pairs_per_prompt: int = 4
  # Answers sampled per evaluation prompt, before and after: win rates and pass rates average
  # them, and their intervals count prompts, not answers (evaluation.effective_n) — more
  # answers take out the sampling noise of one answer a prompt, not the prompts' own spread.
  answers_per_prompt: int = 1
  # Scorers no label came from (built-in names or "module:function"): the report's win rate
  # under each, which sees exploits of the labeller that the gold win rate cannot.
  independent_judges: Tuple[str, ...] = ()

  def __post_init__(self):
    if self.rm_pairs_per_prompt < 1:
      raise ValueError(f"eval.rm_pairs_per_prompt={self.rm_pairs_per_prompt}: expected >= 1")
    if self.answers_per_prompt < 1:
      raise ValueError(f"eval.answers_per_prompt={self.answers_per_prompt}: expected >= 1")


@dataclasses.dataclass(frozen=True)
class Config:
  data: DataSpec = DataSpec()
  base: BaseSpec = BaseSpec()
  feedback: FeedbackSpec = FeedbackSpec()
  reward: RewardSpec = RewardSpec()
  ppo: PPOSpec = PPOSpec()
  # The policy stage's settings when ppo.hparams.algorithm is "dpo" or "ipo" (else unused).
  dpo: DPOSpec = DPOSpec()
  sft: SFTSpec = SFTSpec()
  eval: EvalSpec = EvalSpec()
  mesh: common.MeshSpec = common.MeshSpec()
  rounds: int = 2
  seed: int = 0
  # Checked against the last round: key -> ">= x" / "<= x" (see train/report.py).
  targets: Dict[str, str] = dataclasses.field(default_factory=dict)
  # Stop with an error when more than this fraction of a stage's updates are skipped for a
  # non-finite loss or gradient (a corrupt or divergent state).
  max_skipped_fraction: float = 0.1
  # LoRA for every trained role: adapters (+ scalar heads) on the frozen base model, which is
  # also the reference; the policy's adapters carry over from round to round.
  lora: common.LoraConfig = common.LoraConfig()


# Fields a rerun of a workdir may change: they cannot change its results (report sample
# counts, targets, caches, the human queue's place and patience, the stop criterion; the mesh
# is the layout only, so a preempted run may resume on another slice).
RESULT_NEUTRAL_FIELDS = (
  "eval.num_samples_in_report",
  "targets",
  "data.cache_dir",
  "feedback.human_queue_dir",
  "feedback.human_timeout_s",
  "mesh",
  "max_skipped_fraction",
)

# Bounds of the fields shared with other trainers built on these stages (overoptimization).
_STAGE_BOUNDS = {
  "data.vocab_size": ">= 1",
  "data.seq_len": ">= 2",
  "data.max_train_texts": ">= 0",
  "data.prompt_words[*]": ">= 1",
  "data.prompt_len": ">= 1",
  "data.num_prompts": ">= 1",
  "data.num_eval_prompts": ">= 1",
  "base.steps": ">= 0",
  "base.batch_size": ">= 1",
  "feedback.temperature": "> 0",
  "feedback.tie_threshold": ">= 0",
  "feedback.flip_prob": "in [0, 1]",
  "feedback.pairs_per_round": ">= 1",
  "feedback.sample_temperature": "> 0",
  "feedback.responses_per_prompt": ">= 2",
  "feedback.human_timeout_s": "> 0",
  "feedback.human_fraction": "in [0, 1]",
  "feedback.bias": "in [0, 1]",
  "reward.epochs": ">= 1",
  "reward.batch_size": ">= 1",
  "reward.hparams.center_coef": ">= 0",
  "reward.head_init_std": ">= 0",
  "ppo.iterations": ">= 1",
  "ppo.batch_size": ">= 1",
  "ppo.init_kl_coef": ">= 0",
  "ppo.norm_samples": ">= 1",
  "ppo.hparams.top_k": ">= 0",
  "ppo.hparams.top_p": "in (0, 1]",
  "ppo.hparams.kl_target": "> 0",
  "ppo.hparams.kl_horizon": "> 0",
  "ppo.hparams.gamma": "in [0, 1]",
  "ppo.hparams.lam": "in [0, 1]",
  "ppo.hparams.clip_eps": "> 0",
  "ppo.hparams.value_clip_eps": "> 0",
  "ppo.hparams.vf_coef": ">= 0",
}
_BOUNDS = {
  "rounds": ">= 1",
  "max_skipped_fraction": "in [0, 1]",
  "eval.num_samples_in_report": ">= 0",
  "eval.rm_pairs_per_prompt": ">= 1",
  "eval.answers_per_prompt": ">= 1",
  "sft.steps": ">= 0",
  "sft.batch_size": ">= 1",
  "sft.samples_per_prompt": ">= 1",
  "sft.resample_rounds": ">= 0",
  "sft.temperature": "> 0",
}


def stage_errors(cfg) -> List[str]:
  """Problems in the data / base / feedback / reward / ppo / mesh fields of ``cfg`` (a
  pipeline or over-optimisation config), one line per problem naming the field."""
  from rlhf_jax import config_schema

  errors = config_schema.check_bounds(cfg, _STAGE_BOUNDS)
  errors += common.spec_errors(
    cfg, optimizers=("base.optimizer", "reward.optimizer", "ppo.optimizer"), meshes=("mesh",)
  )
  if not cfg.base.path and cfg.base.preset not in common.PRESETS:
    errors.append(
      f"config.base.preset={cfg.base.preset!r}: expected one of "
      f"{sorted(common.PRESETS)} (or set base.path)"
    )
  errors += _data_kind_errors(cfg)
  lo, hi = cfg.data.prompt_words
  if lo > hi:
    errors.append(
      f"config.data.prompt_words={cfg.data.prompt_words!r}: expected (min, max) with min <= max"
    )
  mb = cfg.ppo.hparams.num_minibatches
  if cfg.ppo.batch_size >= 1 and cfg.ppo.batch_size % mb:
    errors.append(
      f"config.ppo.batch_size={cfg.ppo.batch_size}: must be divisible by "
      f"config.ppo.hparams.num_minibatches={mb}"
    )
  if cfg.ppo.value_init not in ("reward", "zero"):
    errors.append(f"config.ppo.value_init={cfg.ppo.value_init!r}: expected 'reward' or 'zero'")
  source = cfg.feedback.source
  if source not in ("simulated", "ai_judge", "human") and ":" not in source:
    errors.append(
      f"config.feedback.source={source!r}: expected 'simulated', 'ai_judge', "
      "'human' or a 'module:function' judge"
    )
  mix = cfg.feedback.human_mix_source
  if source == "human" and cfg.feedback.human_fraction < 1.0:
    if mix not in ("simulated", "ai_judge") and ":" not in mix:
      errors.append(
        f"config.feedback.human_mix_source={mix!r}: expected 'simulated', 'ai_judge' or a "
        "'module:function' judge (labels the pairs not sent to people)"
      )
    if mix == "ai_judge" and not cfg.feedback.judge_model_path:
      errors.append("config.feedback.judge_model_path: required with human_mix_source='ai_judge'")
  if source == "ai_judge" and not cfg.feedback.judge_model_path:
    errors.append("config.feedback.judge_model_path: required with feedback.source='ai_judge'")
  algorithm = cfg.ppo.hparams.algorithm
  if not hasattr(cfg, "dpo") and cfg.ppo.reward_source != "model":
    errors.append(
      f"config.ppo.reward_source={cfg.ppo.reward_source!r}: this task studies the reward "
      "model; a scorer reward runs in the pipeline (task='pipeline', configs/grpo.py:rlvr)"
    )
  elif hasattr(cfg, "dpo"):
    errors += ppo_train.reward_source_errors(
      cfg.ppo.reward_source,
      cfg.ppo.hparams,
      cfg.ppo.value_init,
      field="config.ppo.reward_source",
      value_init_field="config.ppo.value_init",
      algorithm_field="config.ppo.hparams.algorithm",
    )
  if algorithm in ppo_lib.PREFERENCE_ALGORITHMS and not hasattr(cfg, "dpo"):
    errors.append(
      f"config.ppo.hparams.algorithm={algorithm!r}: this task trains its policy from "
      "rollouts; DPO / IPO run in the pipeline (task='pipeline', configs/dpo.py)"
    )
  return errors


def _data_kind_errors(cfg) -> List[str]:
  """Problems of ``data.kind`` with the base model and feedback fields, naming the fields."""
  kind = cfg.data.kind
  if kind not in DATA_KINDS:
    return [f"config.data.kind={kind!r}: expected one of {DATA_KINDS}"]
  errors = []
  if kind == "assistant":
    if not cfg.base.path and not cfg.data.tokenizer:
      errors.append(
        "config.data.tokenizer: data.kind='assistant' needs a chat checkpoint's tokenizer; set "
        "base.path (e.g. 'smollm2-135m-instruct') or data.tokenizer"
      )
    if not cfg.base.path and cfg.base.steps > 0:
      errors.append(
        f"config.base.steps={cfg.base.steps}: data.kind='assistant' has no corpus to pretrain "
        "on; set base.path, or base.steps=0 for a randomly initialised preset (smoke tests)"
      )
    from rlhf_jax.data.assistant_prompts import categories_problem

    cats = tuple(cfg.data.categories)
    if cats and (problem := categories_problem(cats)):  # () draws all five
      errors.append(f"config.data.categories={cats!r}: {problem} (or () for all)")
  elif cfg.data.categories:
    errors.append(
      f"config.data.categories={tuple(cfg.data.categories)!r}: only for data.kind='assistant'"
    )
  if kind != "assistant" and getattr(getattr(cfg, "sft", None), "steps", 0) > 0:
    errors.append(
      f"config.sft.steps={cfg.sft.steps}: the supervised stage revises answers with the "
      "assistant task's checks; it needs data.kind='assistant'"
    )
  if kind != "assistant" and cfg.data.tokenizer:
    errors.append(
      f"config.data.tokenizer={cfg.data.tokenizer!r}: only for data.kind='assistant' (the "
      "corpus task trains its own tokenizer)"
    )
  if getattr(cfg.feedback, "bias", 0.0) > 0 and (
    kind != "assistant" or cfg.feedback.source != "simulated"
  ):
    errors.append(
      f"config.feedback.bias={cfg.feedback.bias}: biased (sycophantic) annotators need "
      "data.kind='assistant' and feedback.source='simulated'"
    )
  if getattr(cfg.feedback, "contrast_groups", False) and kind != "assistant":
    errors.append(
      "config.feedback.contrast_groups=True: contrast groups (a decline and an answer in "
      "every harmful / benign comparison group) need data.kind='assistant'"
    )
  if kind == "corpus" and cfg.base.steps < 1 and not cfg.base.path:
    errors.append(f"config.base.steps={cfg.base.steps}: expected >= 1 (or set base.path)")
  return errors


def _dpo_errors(cfg: Config) -> List[str]:
  """Problems in ``cfg.dpo`` when the policy stage is DPO / IPO, naming the fields."""
  from rlhf_jax import config_schema

  algorithm = cfg.ppo.hparams.algorithm
  if algorithm not in ppo_lib.PREFERENCE_ALGORITHMS:
    return []
  errors = config_schema.check_bounds(cfg, {"dpo.epochs": ">= 1", "dpo.batch_size": ">= 1"})
  errors += common.spec_errors(cfg, optimizers=("dpo.optimizer",))
  try:
    cfg.dpo.hparams(algorithm)
  except ValueError as e:
    message = str(e).replace("DPOHparams.", "config.dpo.")
    errors.append(message.replace("loss_type='ipo'", "config.ppo.hparams.algorithm='ipo'"))
  pairs = cfg.feedback.pairs_per_round
  if 1 <= pairs < cfg.dpo.batch_size:
    errors.append(
      f"config.dpo.batch_size={cfg.dpo.batch_size}: larger than the {pairs} pairs labelled "
      "each round (feedback.pairs_per_round) that DPO trains on"
    )
  return errors


def _group_errors(cfg: Config) -> List[str]:
  """Problems with ``feedback.responses_per_prompt`` K > 2 (whole groups everywhere)."""
  k = cfg.feedback.responses_per_prompt
  if k <= 2:
    return []
  per, errors = k * (k - 1) // 2, []
  if cfg.feedback.pairs_per_round % per:
    errors.append(
      f"config.feedback.pairs_per_round={cfg.feedback.pairs_per_round}: not a multiple of "
      f"the {per} pairs among feedback.responses_per_prompt={k} responses to a prompt"
    )
  if (2 * cfg.reward.batch_size) % k:
    errors.append(
      f"config.reward.batch_size={cfg.reward.batch_size}: a step scores 2 x batch_size "
      f"sequences, which must be whole groups of feedback.responses_per_prompt={k}"
    )
  if cfg.feedback.source == "human" and cfg.feedback.human_fraction < 1:
    errors.append(
      f"config.feedback.human_fraction={cfg.feedback.human_fraction}: with "
      f"feedback.responses_per_prompt={k} a prompt's pairs must all go to one source; use 1"
    )
  if cfg.ppo.hparams.algorithm in ppo_lib.PREFERENCE_ALGORITHMS:
    errors.append(f"config.feedback.responses_per_prompt={k}: DPO / IPO train on pairs; use 2")
  return errors


def check_config(cfg: Config) -> None:
  """Every check of ``cfg`` that needs no files or devices (run at start-up, before any work).

  Raises:
    ConfigError: one line per problem, each naming the field.
  """
  from rlhf_jax import config_schema

  errors = stage_errors(cfg) + config_schema.check_bounds(cfg, _BOUNDS) + _dpo_errors(cfg)
  errors += common.lora_errors(cfg.lora)
  pairs = cfg.feedback.pairs_per_round
  if 1 <= pairs < cfg.reward.batch_size:
    errors.append(
      f"config.reward.batch_size={cfg.reward.batch_size}: larger than the "
      f"{pairs} labelled pairs of round 1 (feedback.pairs_per_round)"
    )
  errors += _group_errors(cfg)
  if errors:
    raise config_schema.ConfigError("\n".join(errors))


_PROBE_PROMPTS = ["The weather today", "She opened the door"]
_PROBE_RESPONSES = (
  [" is lovely and warm.", " and smiled at us."],
  [" is cold and grey.", " and left without a word."],
)


def probe_prompts(kind: str = "corpus") -> List[str]:
  """Two prompts of the task ``kind`` (``DataSpec.kind``) that scorers are probed with."""
  if kind == "assistant":
    from rlhf_jax.data import assistant_prompts

    return [r.text for r in assistant_prompts.generate_prompts(0, 0, 1).eval[:2]]
  return list(_PROBE_PROMPTS)


def probe_scorer(fn, field: str, spec: str, prompts: Optional[Sequence[str]] = None) -> None:
  """Calls a scorer once on a two-pair probe batch (``prompts``, default
  :func:`probe_prompts`): ``fn(prompts, responses)`` must return two finite numbers. Raises
  ValueError naming the config ``field``."""
  where = f"{field}={spec!r}"
  try:
    out = fn(list(prompts or _PROBE_PROMPTS), list(_PROBE_RESPONSES[0]))
  except Exception as e:  # any failure of user code on a valid probe
    raise ValueError(
      f"{where}: calling it as scorer(prompts, responses) on a probe batch of "
      f"2 failed: {type(e).__name__}: {e}"
    ) from e
  try:
    arr = np.asarray(out, np.float64)
  except (TypeError, ValueError):
    raise ValueError(
      f"{where}: a scorer returns one number per response; got "
      f"{type(out).__name__} {str(out)[:60]!r}"
    ) from None
  if arr.shape != (2,):
    raise ValueError(
      f"{where}: a scorer returns one number per response; got shape "
      f"{list(arr.shape)} for 2 responses"
    )
  if not np.all(np.isfinite(arr)):
    raise ValueError(f"{where}: returned non-finite scores {arr.tolist()} on a probe batch")


def probe_judge(fn, field: str, spec: str) -> None:
  """Calls a judge once on a two-pair probe batch (``fn(prompts, responses_a, responses_b)``
  -> probabilities or labels, checked by :func:`judges.normalize_judge_output`). Raises
  ValueError naming the config ``field``."""
  try:
    judges_lib.as_judge(fn)(
      list(_PROBE_PROMPTS), list(_PROBE_RESPONSES[0]), list(_PROBE_RESPONSES[1])
    )
  except Exception as e:  # any failure of user code on a valid probe
    raise ValueError(
      f"{field}={spec!r}: calling it as judge(prompts, responses_a, "
      f"responses_b) on a probe batch of 2 failed: {type(e).__name__}: "
      f"{e}"
    ) from e


def load_scorers(
  spec: FeedbackSpec, prompts: Optional[Sequence[str]] = None, *, probe: bool = True
):
  """The gold scorer (and the labeller's, and a ``module:function`` judge), loaded and probed
  at start-up on ``prompts`` (default: :func:`probe_prompts`; ``probe=False``: loaded only).
  Returns the gold scorer. Raises ValueError naming the config field."""
  fields = [("config.feedback.gold_scorer", spec.gold_scorer)]
  if spec.labeller_scorer and spec.source == "simulated":
    fields.append(("config.feedback.labeller_scorer", spec.labeller_scorer))
  loaded = []
  for field, name in fields:
    try:
      fn = scorers_lib.get_scorer(name)
    except (ValueError, judges_lib.JudgeSpecError) as e:
      raise ValueError(f"{field}: {e}") from None
    if probe:
      probe_scorer(fn, field, name, prompts)
    loaded.append(fn)
  if probe and spec.source not in ("simulated", "ai_judge", "human"):
    try:
      judge = judges_lib.load_callable(spec.source)
    except judges_lib.JudgeSpecError as e:
      raise ValueError(f"config.feedback.source: {e}") from None
    probe_judge(judge, "config.feedback.source", spec.source)
  return loaded[0]


def load_independent_judges(
  spec: EvalSpec, prompts: Optional[Sequence[str]] = None, *, probe: bool = True
) -> Dict[str, Any]:
  """The evaluation's independent judges by name, loaded and probed at start-up (on
  ``prompts``, default :func:`probe_prompts`; ``probe=False``: loaded only). Raises
  ValueError naming ``config.eval.independent_judges``."""
  judges = {}
  for name in spec.independent_judges:
    try:
      judges[name] = scorers_lib.get_scorer(name)
    except (ValueError, judges_lib.JudgeSpecError) as e:
      raise ValueError(f"config.eval.independent_judges: {e}") from None
    if probe:
      probe_scorer(judges[name], "config.eval.independent_judges", name, prompts)
  return judges


# ----------------------------------------------------------------------------- utilities


def _done(path: pathlib.Path) -> bool:
  return (path / "DONE").exists()


def _mark_done(path: pathlib.Path, info: Optional[dict] = None) -> None:
  data_lib.atomic_write_json(path / "DONE", info or {})


def _read_json(path: pathlib.Path) -> Any:
  with open(path) as f:
    return json.load(f)


def _lead_done(path: pathlib.Path, name: str) -> bool:
  """Whether ``path/DONE`` exists, as process 0 sees it (one answer for every process)."""
  return distributed.from_lead(lambda: _done(path), f"{name}: done?")


def _lead_scorer(fn, name: str):
  """``fn(prompts, responses) -> scores`` called on process 0 only, its scores (float64)
  broadcast to every process: a judge is called once per batch, not once per process (a
  collective: every process calls the returned scorer at the same points). ``fn`` itself
  single-process."""
  if jax.process_count() == 1:
    return fn

  def scorer(prompts, responses):
    return distributed.from_lead(lambda: np.asarray(fn(prompts, responses), np.float64), name)

  return scorer


class Models(NamedTuple):
  """Module definitions shared by every stage (one per role; params live elsewhere)."""

  lm: Transformer  # policy and reference
  scalar: Transformer  # reward and value models
  both: Transformer  # the value head on the policy trunk (ppo.hparams.shared_trunk)

  @classmethod
  def from_base(cls, base_cfg) -> "Models":
    return cls(
      lm=Transformer(base_cfg.replace(head="lm")),
      scalar=Transformer(base_cfg.replace(head="scalar")),
      both=Transformer(base_cfg.replace(head="both")),
    )


def decode_responses(tokenizer, tokens_BT: np.ndarray, mask_BT: np.ndarray) -> List[str]:
  """Response texts of sampled ``tokens_BT``: positions with ``mask_BT`` 0 dropped, each cut
  at its first stop token (EOS, or a chat tokenizer's end-of-turn and other stop ids)."""
  out = []
  stops = {int(tokenizer.eos_token_id), *map(int, getattr(tokenizer, "stop_ids", ()))}
  for toks, m in zip(tokens_BT, mask_BT):
    ids = []
    for t, keep in zip(toks, m):
      if int(t) in stops:
        break
      if keep:
        ids.append(int(t))
    out.append(tokenizer.decode(ids))
  return out


def join_sequences(prompt_ids_BP, prompt_mask_BP, tokens_BT, mask_BT):
  """Prompt and response side by side: ``(ids [B, P + T], mask [B, P + T])``, int32."""
  return (
    np.concatenate([prompt_ids_BP, tokens_BT], 1).astype(np.int32),
    np.concatenate([prompt_mask_BP, mask_BT], 1).astype(np.int32),
  )


def pairs_arrays(prompt_ids, prompt_mask, ta, ma, tb, mb, labels) -> dict:
  """Preference pairs as the reward trainer's arrays: ``ids_a, mask_a, ids_b, mask_b``
  (prompt + response) and ``label`` (int32 label indices)."""
  ids_a, mask_a = join_sequences(prompt_ids, prompt_mask, ta, ma)
  ids_b, mask_b = join_sequences(prompt_ids, prompt_mask, tb, mb)
  return {
    "ids_a": ids_a,
    "mask_a": mask_a,
    "ids_b": ids_b,
    "mask_b": mask_b,
    "label": np.asarray(labels, np.int32),
  }


def label_indices(records) -> np.ndarray:
  """The label index of each preference record (``losses.LABEL_*``), int32."""
  return np.asarray([r.label_index for r in records], np.int32)


def _concat_pairs(pairs: Optional[dict], new: dict) -> dict:
  return new if pairs is None else {k: np.concatenate([pairs[k], new[k]]) for k in new}


# ----------------------------------------------------------------------------- stage: data


def prepare_data(spec: DataSpec, out: pathlib.Path, seed: int, base_path: Optional[str] = None):
  """Corpus, tokenizer, packed pretraining rows and prompts, stored as TFDS datasets; for
  ``spec.kind == "assistant"`` the chat prompts instead (:func:`prepare_assistant_data`).
  Returns the tokenizer, loaded from ``out/tokenizer``. Process 0 alone downloads, trains
  and writes; the other processes wait for it, then load the same files."""
  if spec.kind == "assistant":
    return prepare_assistant_data(spec, out, seed, base_path)
  distributed.lead_only(
    lambda: _prepare_corpus_data(spec, out, seed), "data: corpus, tokenizer, datasets"
  )
  return data_lib.load_tokenizer(out / "tokenizer")


def _prepare_corpus_data(spec: DataSpec, out: pathlib.Path, seed: int) -> None:
  """:func:`prepare_data`'s work for a corpus run (nothing once ``out/DONE`` exists)."""
  if _done(out):
    return
  out.mkdir(parents=True, exist_ok=True)
  cache = spec.cache_dir or _default_cache()
  t0 = time.perf_counter()
  corpus = data_lib.prepare_corpus(cache, spec.sources)
  train_texts = corpus.texts("train")
  if spec.max_train_texts:
    rng = np.random.default_rng(seed)
    keep = rng.permutation(len(train_texts))[: spec.max_train_texts]
    train_texts = [train_texts[i] for i in sorted(keep)]
  tokenizer = data_lib.train_tokenizer(train_texts, spec.vocab_size, out / "tokenizer")
  ids, mask = data_lib.pack_texts(tokenizer, train_texts, spec.seq_len, progress=True)
  heldout = corpus.texts("heldout")
  h_ids, h_mask = data_lib.pack_texts(tokenizer, heldout, spec.seq_len)
  sentences = corpus.sentences("heldout")
  prompts = data_lib.make_opening_prompts(
    sentences,
    num_words=tuple(spec.prompt_words),
    num_prompts=spec.num_prompts + spec.num_eval_prompts,
    seed=seed,
  )
  if len(prompts) < spec.num_prompts + spec.num_eval_prompts:
    raise ValueError(
      f"data: only {len(prompts)} prompts could be cut from held-out text; "
      f"lower data.num_prompts / data.num_eval_prompts"
    )
  _write_words(out, train_texts)
  tfds_dir = out / "tfds"
  data_lib.write_token_rows_tfds(
    tfds_dir, {"train": (ids, mask), "heldout": (h_ids, h_mask)}, name="corpus_rows", overwrite=True
  )
  data_lib.write_prompts_tfds(
    tfds_dir,
    {"train": prompts[: spec.num_prompts], "eval": prompts[spec.num_prompts :]},
    overwrite=True,
  )
  stats = corpus.stats()
  _mark_done(
    out,
    {
      "train_rows": int(len(ids)),
      "heldout_rows": int(len(h_ids)),
      "prompts": len(prompts),
      "words": stats["train"]["total"]["words"],
      "seconds": time.perf_counter() - t0,
    },
  )


def chat_tokenizer(spec: DataSpec, base_path: Optional[str]):
  """The :class:`rlhf_jax.models.chat.ChatTokenizer` of an assistant run: ``data.tokenizer``'s
  checkpoint, else ``base.path``'s."""
  from rlhf_jax.models import chat

  source = spec.tokenizer or base_path
  if not source:
    raise ValueError("config.data.tokenizer: data.kind='assistant' needs it or base.path")
  return chat.load_chat_tokenizer(source)


def render_chat_prompts(tokenizer, records) -> List[str]:
  """Each assistant prompt record as the text the policy continues: its messages through the
  checkpoint's chat template, with the assistant turn's header appended."""
  return [tokenizer.apply_chat_template(r.messages(), add_generation_prompt=True) for r in records]


def prepare_assistant_data(spec: DataSpec, out: pathlib.Path, seed: int, base_path: Optional[str]):
  """The assistant task's prompts (``generate_prompts(seed)``: ``num_prompts`` training and
  ``num_eval_prompts`` evaluation prompts, ``spec.categories`` (default all five) in equal
  shares) rendered with
  the chat template and stored like the corpus prompts (plus ``prompts_<split>.jsonl`` with
  the records). Returns the chat tokenizer. Raises ValueError naming ``data.prompt_len`` when
  a rendered prompt does not fit (process 0 writes; every process loads the tokenizer)."""
  tokenizer = chat_tokenizer(spec, base_path)
  distributed.lead_only(
    lambda: _write_assistant_data(spec, out, seed, tokenizer), "data: assistant prompts"
  )
  return tokenizer


def _write_assistant_data(spec: DataSpec, out: pathlib.Path, seed: int, tokenizer) -> None:
  """:func:`prepare_assistant_data`'s work (nothing once ``out/DONE`` exists)."""
  from rlhf_jax.data import assistant_prompts

  if _done(out):
    return
  out.mkdir(parents=True, exist_ok=True)
  t0 = time.perf_counter()
  categories = tuple(spec.categories) or assistant_prompts.CATEGORIES
  k = len(categories)
  splits = assistant_prompts.generate_prompts(
    seed, -(-spec.num_prompts // k), -(-spec.num_eval_prompts // k), categories
  )
  records = {
    "train": splits.train[: spec.num_prompts],
    "eval": splits.eval[: spec.num_eval_prompts],
  }
  rendered = {name: render_chat_prompts(tokenizer, recs) for name, recs in records.items()}
  longest = max(len(tokenizer.encode(t)) for texts in rendered.values() for t in texts)
  if longest > spec.prompt_len:
    raise ValueError(
      f"config.data.prompt_len={spec.prompt_len}: the longest prompt rendered with "
      f"{tokenizer.source}'s chat template is {longest} tokens; raise it to at least {longest}"
    )
  for name, recs in records.items():
    assistant_prompts.write_prompts_jsonl(out / f"prompts_{name}.jsonl", recs)
  data_lib.write_prompts_tfds(out / "tfds", rendered, overwrite=True)
  _mark_done(
    out,
    {
      "kind": "assistant",
      "prompts": sum(map(len, records.values())),
      "longest_prompt_tokens": longest,
      "tokenizer": tokenizer.source,
      "seconds": time.perf_counter() - t0,
    },
  )


def _write_words(out: pathlib.Path, texts: Sequence[str]) -> None:
  vocab = sorted({w for t in texts for w in evaluation.words(t)})
  data_lib.atomic_write_json(out / "words.json", vocab)


def corpus_words(spec: DataSpec, out: pathlib.Path, seed: int) -> frozenset:
  """The training corpus's words (lower-cased): the vocabulary that tells non-words apart.

  Written by :func:`prepare_data`; a data stage finished before it existed gets it here
  from the cached corpus.
  """
  path = out / "words.json"

  def write_if_missing() -> None:  # process 0
    if path.exists():
      return
    texts = data_lib.prepare_corpus(spec.cache_dir or _default_cache(), spec.sources).texts("train")
    if spec.max_train_texts:
      keep = np.random.default_rng(seed).permutation(len(texts))[: spec.max_train_texts]
      texts = [texts[i] for i in sorted(keep)]
    _write_words(out, texts)

  distributed.lead_only(write_if_missing, "data: words.json")
  return frozenset(_read_json(path))


def policy_hparams(spec: PPOSpec, tokenizer) -> ppo_lib.PPOHparams:
  """``spec.hparams`` with the run's EOS and PAD ids, and ``spec.stop_text``'s token id as
  the stop token. Raises ValueError when the stop text is not one token."""
  stop = spec.hparams.stop_token_id
  if spec.stop_text:
    ids = tokenizer.encode(spec.stop_text, add_special_tokens=False)
    if len(ids) != 1:
      raise ValueError(
        f"ppo.stop_text={spec.stop_text!r} is {len(ids)} tokens of the run's "
        "tokenizer; it must be exactly one"
      )
    stop = int(ids[0])
  return dataclasses.replace(
    spec.hparams,
    # a chat model's turn ends at its end-of-turn token (SmolLM2: <|im_end|>)
    eos_id=int(getattr(tokenizer, "end_of_turn_id", tokenizer.eos_token_id)),
    pad_id=int(tokenizer.pad_token_id),
    stop_token_id=stop,
  )


def _read_rows(out: pathlib.Path, split: str) -> Tuple[np.ndarray, np.ndarray]:
  src = data_lib.open_tfds_split(out / "tfds" / "corpus_rows" / "1.0.0", split)
  ds = data_lib.grain_dataset(src, batch_size=len(src), transform=None)
  batch = ds[0]
  return np.asarray(batch["ids"], np.int32), np.asarray(batch["mask"], np.int32)


def read_prompts(data_dir: pathlib.Path, split: str) -> List[str]:
  """The prompts of ``split`` ("train" or "eval") written by :func:`prepare_data`."""
  src = data_lib.open_tfds_split(data_dir / "tfds" / "prompts" / "1.0.0", split)
  return [ex["prompt"] for ex in data_lib.grain_dataset(src)]


class Prompts(NamedTuple):
  """Training and evaluation prompts, as text and left-padded ids ``[B, prompt_len]``."""

  train: List[str]
  train_ids: np.ndarray
  train_mask: np.ndarray
  eval: List[str]
  eval_ids: np.ndarray
  eval_mask: np.ndarray


def load_prompts(data_dir: pathlib.Path, tokenizer, prompt_len: int) -> Prompts:
  train, eval_ = read_prompts(data_dir, "train"), read_prompts(data_dir, "eval")
  p_ids, p_mask = data_lib.encode_prompts(tokenizer, train, prompt_len)
  e_ids, e_mask = data_lib.encode_prompts(tokenizer, eval_, prompt_len)
  return Prompts(train, p_ids, p_mask, eval_, e_ids, e_mask)


# ----------------------------------------------------------------------------- stage: base model


def pretrain_base(
  spec: BaseSpec,
  data_dir: pathlib.Path,
  out: pathlib.Path,
  tokenizer,
  mesh,
  seed: int,
  *,
  checkpoint_every: int = 200,
  max_skipped_fraction: float = 0.1,
):
  """Pretrain (or load) the base LM; returns (module, params). The training loop is the SFT
  trainer's (:func:`rlhf_jax.train.sft.train_lm`). ``spec.steps == 0``: the preset at random
  init, saved untrained (the assistant task's smoke base: a chat tokenizer, no corpus).

  Checkpoints go to ``out/checkpoints`` every ``checkpoint_every`` steps, at the end and on
  SIGTERM (then :class:`rlhf_jax.checkpoint.Preempted` is raised); a re-run resumes them.
  Process 0 writes the model (gathered from every process) and ``DONE``.
  """
  from rlhf_jax.models import hf

  if spec.path or _lead_done(out, "base"):
    model, params = hf.from_pretrained(spec.path or out / "model", head="lm")
    if spec.path:
      _check_base_tokenizer(_resolve(spec.path), model, tokenizer, data_dir)
    return model, common.shard_params(model, params, mesh)
  if spec.steps == 0:
    cfg = common.preset_config(spec.preset, _vocab_len(tokenizer), head="lm")
    model = Transformer(cfg)
    params, _ = sharding.init_sharded(boxed_init_fn(model), jax.random.PRNGKey(seed), mesh=mesh)
    host = sharding.to_host(params)

    def save_init() -> None:  # process 0
      hf.save_pretrained(model, host, out / "model", **export_kwargs(tokenizer))
      _mark_done(out, {"steps": 0, "heldout_perplexity": None, "random_init": True})

    distributed.lead_only(save_init, "base: save")
    return model, params
  ids, mask = _read_rows(data_dir, "train")
  h_ids, h_mask = _read_rows(data_dir, "heldout")
  cfg = common.preset_config(spec.preset, len(tokenizer), head="lm")
  model = Transformer(cfg)
  init = boxed_init_fn(model)
  params, _ = sharding.init_sharded(init, jax.random.PRNGKey(seed), mesh=mesh)
  t0 = time.perf_counter()
  state, _ = sft_train.train_lm(
    model,
    params,
    ids,
    mask,
    mask,
    optim_spec=spec.optimizer,
    **common.config_kwargs(spec, "steps", "batch_size"),
    seed=seed,
    mesh=mesh,
    workdir=out,
    log_every=50,
    checkpoint_every=checkpoint_every,
    keep_checkpoints=2,
    max_skipped_fraction=max_skipped_fraction,
    desc="pretrain base",
    batch_rows=_stream_rows(len(ids), spec.batch_size, seed),
  )
  heldout_ppl = _perplexity(model, state.params, h_ids, h_mask, spec.batch_size, mesh)
  host = sharding.to_host(state.params)
  info = {"steps": spec.steps, "heldout_perplexity": heldout_ppl}

  def save_trained() -> None:  # process 0
    hf.save_pretrained(model, host, out / "model", tokenizer=tokenizer)
    _mark_done(out, dict(info, seconds=time.perf_counter() - t0))

  distributed.lead_only(save_trained, "base: save")
  return model, state.params


def _stream_rows(n_rows: int, batch_size: int, seed: int):
  """The rows of step ``i`` from one seeded stream of draws; on a resume the draws of the
  steps already taken are replayed, so the run takes the same batches. (The base model has
  always drawn this way; ``train_lm``'s default, one draw per ``(seed, step)``, would change
  its numbers.)"""
  rng, taken = np.random.default_rng(seed), 0

  def rows(i: int) -> np.ndarray:
    nonlocal taken
    if i < taken:
      raise ValueError(f"step {i} requested after step {taken - 1}: draws only go forward")
    for _ in range(i - taken):
      rng.integers(0, n_rows, batch_size)
    taken = i + 1
    return rng.integers(0, n_rows, batch_size)

  return rows


def _vocab_len(tokenizer) -> int:
  """Token ids of the run's tokenizer (a chat tokenizer's checkpoint tokenizer included)."""
  return len(getattr(tokenizer, "hf", tokenizer))


def _resolve(spec: str) -> pathlib.Path:
  from rlhf_jax.models import gguf

  return gguf.resolve_checkpoint(spec)


def export_kwargs(tokenizer) -> dict:
  """``save_pretrained`` arguments that save ``tokenizer`` with a model: a chat tokenizer's
  own files, PAD, and its end-of-turn as EOS with every stop id in ``generation_config.json``
  (so ``transformers``' ``generate`` ends a turn where the policy did)."""
  if not hasattr(tokenizer, "end_of_turn_id"):
    return {"tokenizer": tokenizer}
  return {
    "tokenizer": tokenizer.hf,
    "pad_token_id": tokenizer.pad_id,
    "eos_token_id": tokenizer.end_of_turn_id,
    "generation_config": {
      "eos_token_id": list(tokenizer.stop_ids),
      "pad_token_id": tokenizer.pad_id,
      **({} if tokenizer.bos_id is None else {"bos_token_id": tokenizer.bos_id}),
    },
  }


def _check_base_tokenizer(path: pathlib.Path, model, tokenizer, data_dir: pathlib.Path) -> None:
  """A base checkpoint must speak the run's tokenizer: same vocabulary, ids in range."""
  where = f"base.path={str(path)!r}"
  if model.cfg.vocab_size < _vocab_len(tokenizer):
    raise ValueError(
      f"{where}: the model has {model.cfg.vocab_size} token embeddings but the "
      f"run's tokenizer ({getattr(tokenizer, 'source', data_dir / 'tokenizer')}) has "
      f"{_vocab_len(tokenizer)} tokens"
    )
  if (path / "tokenizer.json").exists():
    # a chat checkpoint's own tokenizer may pad with its EOS; only its vocabulary matters here
    own = data_lib.load_tokenizer(path, check_special_tokens=not hasattr(tokenizer, "hf"))
    if own.get_vocab() != getattr(tokenizer, "hf", tokenizer).get_vocab():
      raise ValueError(
        f"{where}: its tokenizer.json has a different vocabulary from the run's "
        f"tokenizer ({data_dir / 'tokenizer'}); use the same data settings "
        "(data.sources, data.vocab_size) as the run that trained it"
      )


def _perplexity(model, params, ids, mask, batch_size, mesh) -> float:
  evaluate = jax.jit(sft_lib.make_lm_eval(model))
  total, count = 0.0, 0.0
  for s, e in common.batches(len(ids), batch_size):
    if e - s < batch_size:
      break
    b = sharding.shard_global_batch(
      {"ids": ids[s:e], "mask": mask[s:e], "loss_mask": mask[s:e]}, mesh
    )
    nll, n = evaluate(params, b)
    total += float(nll)
    count += float(n)
  return float(np.exp(total / max(count, 1.0)))


def base_stage(cfg, root: pathlib.Path, tokenizer, mesh) -> Tuple[Transformer, Any]:
  """:func:`pretrain_base` for a config with ``base``, ``seed`` and ``max_skipped_fraction``
  (a pipeline or over-optimisation study) in its workdir ``root`` (``data/``, ``base/``)."""
  return pretrain_base(
    cfg.base,
    root / "data",
    root / "base",
    tokenizer,
    mesh,
    cfg.seed,
    max_skipped_fraction=cfg.max_skipped_fraction,
  )


# ----------------------------------------------------------------------------- stage: demonstrations


def response_rows(
  tokenizer, texts: Sequence[str], eos_id: int, response_len: int, cut: bool = False
):
  """Texts as response rows ``(tokens, mask) [N, response_len]``: each text's tokens then
  ``eos_id``, right-padded with the tokenizer's pad id, as the sampler returns them. A text
  longer than ``response_len - 1`` tokens is left out, or with ``cut`` kept as its first
  ``response_len`` tokens and no ``eos_id`` (a sample that ran out of tokens); returns the
  rows and the indices of the texts they hold."""
  keep, tokens = [], []
  for i, text in enumerate(texts):
    ids = tokenizer.encode(text, add_special_tokens=False) + [eos_id]
    if cut and len(ids) > response_len:
      ids = ids[:response_len]
    if len(ids) <= response_len:
      keep.append(i)
      tokens.append(ids)
  resp = np.full((len(keep), response_len), int(tokenizer.pad_token_id), np.int32)
  resp_mask = np.zeros((len(keep), response_len), np.int32)
  for row, ids in enumerate(tokens):
    resp[row, : len(ids)] = ids
    resp_mask[row, : len(ids)] = 1
  return resp, resp_mask, np.asarray(keep, np.int64)


def demonstration_rows(tokenizer, prompts: Prompts, demos, eos_id: int, response_len: int):
  """SFT rows ``(ids, mask, loss_mask) [N, prompt_len + response_len]`` of the training
  prompts with a demonstration (``demos``: one ``(text, source)`` or None per training
  prompt): the left-padded prompt, then the demonstration's tokens and ``eos_id``, loss on
  those. A demonstration longer than ``response_len - 1`` tokens is left out (the policy
  could not end it within its response budget). Returns the rows and the indices of the
  prompts they come from."""
  have = [i for i, demo in enumerate(demos) if demo is not None]
  resp, resp_mask, kept = response_rows(
    tokenizer, [demos[i][0] for i in have], eos_id, response_len
  )
  rows = np.asarray(have, np.int64)[kept]
  ids, mask = join_sequences(prompts.train_ids[rows], prompts.train_mask[rows], resp, resp_mask)
  loss_mask = np.concatenate([np.zeros_like(prompts.train_mask[rows]), resp_mask], 1)
  return ids, mask, loss_mask.astype(np.int32), rows


def demonstration_stage(
  cfg: Config,
  root: pathlib.Path,
  tokenizer,
  sampler: "Sampler",
  models: Models,
  base_params,
  prompts: Prompts,
  hp: ppo_lib.PPOHparams,
  mesh,
):
  """``sft/``: the base's answers to the training prompts, demonstrations from them
  (:mod:`rlhf_jax.feedback.demonstrations`, written to ``sft/demonstrations.jsonl``), and the
  base fine-tuned on them (:class:`SFTSpec`; LoRA adapters merged when ``lora.enabled``),
  saved in Hugging Face layout to ``sft/model``. Returns the fine-tuned params; a finished
  stage (``sft/DONE``) is loaded instead. The training loop checkpoints and resumes like
  every other stage."""
  from rlhf_jax.data import assistant_prompts
  from rlhf_jax.feedback import demonstrations as demo_lib
  from rlhf_jax.models import hf

  spec, out = cfg.sft, root / "sft"
  if _lead_done(out, "sft"):
    _, params = hf.from_pretrained(out / "model", head="lm")
    return common.shard_params(models.lm, params, mesh)
  distributed.lead_only(lambda: out.mkdir(parents=True, exist_ok=True), "sft: workdir")
  t0 = time.perf_counter()
  answers = []
  for s in range(spec.samples_per_prompt):
    tok, m = sampler.sample(
      base_params,
      prompts.train_ids,
      prompts.train_mask,
      cfg.seed * 31 + 500 + s,
      spec.temperature,
      desc=f"sft: the base's answers {s + 1}/{spec.samples_per_prompt}",
    )
    answers.append(decode_responses(tokenizer, tok, m))
  records = [assistant_prompts.lookup_prompt(p) for p in prompts.train]
  per_prompt = [[a[i] for a in answers] for i in range(len(records))]
  demos = demo_lib.demonstrations(records, per_prompt)

  def ask_again(rows, r):  # the base's answers to prompts without a demonstration, again
    tok, m = sampler.sample(
      base_params,
      prompts.train_ids[rows],
      prompts.train_mask[rows],
      cfg.seed * 31 + 600 + r,
      spec.temperature,
      desc=f"sft: prompts without a demonstration asked again ({r + 1})",
    )
    return decode_responses(tokenizer, tok, m)

  demos = demo_lib.ask_until_demonstrated(
    records, per_prompt, demos, ask_again, spec.resample_rounds, sampler.batch
  )
  ids, mask, loss_mask, rows = demonstration_rows(
    tokenizer, prompts, demos, hp.eos_id, hp.response_len
  )
  counts: Dict[str, Dict[str, int]] = {}
  for rec, demo in zip(records, demos):
    c = counts.setdefault(rec.category, {"prompts": 0, "sample": 0, "revision": 0})
    c["prompts"] += 1
    if demo is not None:
      c[demo[1]] += 1
  info: Dict[str, Any] = {
    "demonstrations": int(len(rows)),
    "too_long": int(sum(d is not None for d in demos) - len(rows)),
    "by_category": counts,
  }
  kept = set(rows.tolist())

  def write_demos() -> None:  # process 0
    with open(out / "demonstrations.jsonl", "w") as f:
      for i, (rec, demo) in enumerate(zip(records, demos)):
        row = {
          "prompt": rec.text,
          "category": rec.category,
          "answers": per_prompt[i],
          "demonstration": demo[0] if demo else None,
          "source": demo[1] if demo else None,
          "used": i in kept,
        }
        f.write(json.dumps(row) + "\n")

  distributed.lead_only(write_demos, "sft: demonstrations")
  if not len(rows):
    raise RuntimeError(
      f"{out / 'demonstrations.jsonl'}: no demonstration fits ppo.hparams.response_len="
      f"{hp.response_len}; the supervised stage has nothing to train on"
    )
  _log.info("sft: %d demonstrations (%s)", len(rows), counts)
  lora = common.lora_spec(cfg.lora)
  state, last = sft_train.train_lm(
    models.lm,
    base_params,
    ids,
    mask,
    loss_mask,
    optim_spec=spec.optimizer,
    steps=spec.steps,
    batch_size=spec.batch_size,
    seed=cfg.seed + 77,
    mesh=mesh,
    workdir=out,
    log_every=max(1, min(10, spec.steps)),
    checkpoint_every=max(1, spec.steps),
    keep_checkpoints=1,
    max_skipped_fraction=cfg.max_skipped_fraction,
    desc="sft on demonstrations",
    lora=lora,
  )
  params = _materialize(state.params, base_params)
  host = sharding.to_host(params)
  info.update(final_loss=last.get("loss"), seconds=time.perf_counter() - t0)

  def save() -> None:  # process 0
    hf.save_pretrained(models.lm, host, out / "model", **export_kwargs(tokenizer))
    _mark_done(out, info)

  distributed.lead_only(save, "sft: save")
  return params


# ----------------------------------------------------------------------------- sampling


def sampling_batch(ppo_cfg, hp: ppo_lib.PPOHparams) -> int:
  """Rows per sampling call for pairs, reference samples and evaluation: the rollouts of one
  policy iteration (``ppo.batch_size`` prompts x ``group_size``). Samples depend on this
  batching (one PRNG key per batch), so algorithms with the same rollouts per iteration —
  PPO's 64 prompts, GRPO's 16 x 4 — draw the same pairs and evaluate on the same samples."""
  return ppo_cfg.batch_size * hp.group_size


class Sampler:
  """Jitted sampling + scoring helpers with fixed shapes (compiled once per run)."""

  def __init__(self, models: Models, hp: ppo_lib.PPOHparams, batch: int, mesh):
    self.models, self.hp, self.batch, self.mesh = models, hp, batch, mesh
    self._sample = jax.jit(
      lambda params, ids, mask, rng, temp: ppo_lib.sample_responses(
        models.lm, hp, params, ids, mask, rng, temp
      )
    )
    n = hp.response_len

    def logp(params, seq_ids, seq_mask, tokens, temps_K):  # one forward, K temperatures
      p = seq_ids.shape[1] - n
      logits = models.lm.apply({"params": params}, seq_ids, seq_mask, head_slice=(p - 1, p + n - 1))
      return jnp.stack([ops.token_logprobs(logits, tokens, t) for t in temps_K], 1)  # [B, K, n]

    self._logp = jax.jit(logp)
    self._score = jax.jit(
      lambda params, ids, mask: reward_lib.score_sequences(models.scalar, params, ids, mask)
    )

  def sample(self, params, prompt_ids, prompt_mask, seed: int, temperature: float, desc: str = ""):
    """Returns (tokens [N, n], mask [N, n]) for all prompts, in fixed-size batches; with a
    ``desc``, a progress bar over the batches."""
    toks, masks = [], []
    batches = list(common.batches(len(prompt_ids), self.batch))
    bar = progress(batches, desc=desc, unit="batch", disable=None if desc else True)
    for i, (s, e) in enumerate(bar):
      ids = common.pad_rows(prompt_ids[s:e], self.batch)
      mask = common.pad_rows(prompt_mask[s:e], self.batch)
      b = sharding.shard_global_batch({"ids": ids, "mask": mask}, self.mesh)
      tokens, m, _, _ = self._sample(
        params, b["ids"], b["mask"], jax.random.PRNGKey(seed * 100003 + i), jnp.float32(temperature)
      )
      tokens, m = sharding.to_host((tokens, m))
      toks.append(tokens[: e - s])
      masks.append(m[: e - s])
    return np.concatenate(toks), np.concatenate(masks)

  def _map(self, fn, arrays, extra=(), desc: str = ""):
    outs = []
    n = len(arrays[0])
    batches = list(common.batches(n, self.batch))
    for s, e in progress(batches, desc=desc, unit="batch", disable=None if desc else True):
      padded = [common.pad_rows(a[s:e], self.batch) for a in arrays]
      b = sharding.shard_global_batch(dict(enumerate(padded)), self.mesh)
      outs.append(sharding.to_host(fn(*[b[i] for i in range(len(padded))], *extra))[: e - s])
    return np.concatenate(outs)

  def logprobs(self, params, seq_ids, seq_mask, tokens, temperature, desc: str = ""):
    """Per-token log-probs of ``tokens`` (with a ``desc``, a progress bar over batches)."""
    return self.logprobs_at(params, seq_ids, seq_mask, tokens, (temperature,), desc)[0]

  def logprobs_at(
    self, params, seq_ids, seq_mask, tokens, temperatures: Sequence[float], desc: str = ""
  ) -> Tuple[np.ndarray, ...]:
    """Per-token log-probs of ``tokens`` at each of ``temperatures`` from one forward pass:
    a tuple of ``[N, n]`` arrays, one per temperature."""
    temps = jnp.asarray(temperatures, jnp.float32)
    out = self._map(
      lambda a, b, c, t: self._logp(params, a, b, c, t),
      [seq_ids, seq_mask, tokens],
      (temps,),
      desc,
    )
    return tuple(out[:, i] for i in range(len(temperatures)))

  def scores(self, rm_params, seq_ids, seq_mask, desc: str = ""):
    """Reward-model scores of the sequences (with a ``desc``, a progress bar)."""
    return self._map(lambda a, b: self._score(rm_params, a, b), [seq_ids, seq_mask], desc=desc)


# ----------------------------------------------------------------------------- reference


class Reference(NamedTuple):
  """The reference policy's samples on the evaluation prompts, judged once per run."""

  text: List[str]
  gold: np.ndarray
  perplexity: float
  judged: Dict[str, np.ndarray]  # independent judge -> scores
  degenerate: float  # fraction of degenerate responses
  # Answers per evaluation prompt: ``text[i * k + j]`` is answer j to ``prompts.eval[i]``.
  answers_per_prompt: int = 1


def repeat_rows(texts: Sequence[str], ids: np.ndarray, mask: np.ndarray, k: int):
  """Each prompt repeated ``k`` times in a row: ``(texts, ids, mask, prompt index per row)``."""
  index = np.repeat(np.arange(len(texts)), k)
  return [texts[i] for i in index], ids[index], mask[index], index


def eval_rows(prompts: Prompts, answers_per_prompt: int):
  """The evaluation prompts with each repeated ``answers_per_prompt`` times in a row
  (:func:`repeat_rows`): the rows every evaluation samples."""
  return repeat_rows(prompts.eval, prompts.eval_ids, prompts.eval_mask, answers_per_prompt)


def answer_samples(texts, index, before, after, gold_before, gold_after) -> List[dict]:
  """One record per evaluation answer: ``prompt``, ``prompt_index``, ``before`` / ``after``
  texts and their gold scores (the rows of ``eval_answers.jsonl``)."""
  return [
    {
      "prompt": texts[i],
      "prompt_index": int(index[i]),
      "before": before[i],
      "after": after[i],
      "gold_before": float(gold_before[i]),
      "gold_after": float(gold_after[i]),
    }
    for i in range(len(texts))
  ]


def sample_reference(
  sampler: Sampler,
  tokenizer,
  ref_params,
  prompts: Prompts,
  gold,
  independent: Dict[str, Any],
  vocabulary: frozenset,
  temperature: float,
  seed: int,
  answers_per_prompt: int = 1,
) -> Reference:
  """Reference samples on the evaluation prompts (``answers_per_prompt`` each, rows as in
  :func:`eval_rows`): the baseline of every round's evaluation."""
  texts, ids, mask, _ = eval_rows(prompts, answers_per_prompt)
  tok, m = sampler.sample(ref_params, ids, mask, seed, temperature, desc="reference answers")
  text = decode_responses(tokenizer, tok, m)
  seq = join_sequences(ids, mask, tok, m)
  nll = -sampler.logprobs(ref_params, *seq, tok, 1.0, desc="reference perplexity") * m
  return Reference(
    text=text,
    gold=np.asarray(gold(texts, text), np.float64),
    perplexity=float(np.exp(np.sum(nll) / max(float(np.sum(m)), 1.0))),
    judged={k: np.asarray(j(texts, text), np.float64) for k, j in independent.items()},
    degenerate=float(np.mean(evaluation.degenerate(text, vocabulary))),
    answers_per_prompt=answers_per_prompt,
  )


def reward_eval_pairs(
  sampler: Sampler,
  tokenizer,
  ref_params,
  prompts: Prompts,
  gold,
  pairs_per_prompt: int,
  temperature: float,
  tie_threshold: float,
  seed: int,
) -> dict:
  """Held-out pairs for reward-model evaluation: ``pairs_per_prompt`` pairs of reference
  samples per evaluation prompt, drawn like round 1's labelled pairs, with noise-free gold
  labels (:func:`pairs_arrays` layout)."""
  rep_prompts, rep_ids, rep_mask, _ = eval_rows(prompts, pairs_per_prompt)
  sides = []
  for j in range(2):
    tok, m = sampler.sample(
      ref_params,
      rep_ids,
      rep_mask,
      seed + j,
      temperature,
      desc=f"reward-model eval pairs, side {'ab'[j]}",
    )
    text = decode_responses(tokenizer, tok, m)
    sides.append((tok, m, np.asarray(gold(rep_prompts, text), np.float64)))
  (a_tok, a_m, a_gold), (b_tok, b_m, b_gold) = sides
  return pairs_arrays(
    rep_ids, rep_mask, a_tok, a_m, b_tok, b_m, evaluation.gold_labels(a_gold, b_gold, tie_threshold)
  )


def held_out_reward_pairs(cfg: Config, sampler: Sampler, tokenizer, params, prompts: Prompts, gold):
  """:func:`reward_eval_pairs` as a run of ``cfg`` draws them from ``params`` (its reference):
  ``eval.rm_pairs_per_prompt`` pairs a prompt at the labels' sampling temperature and tie
  threshold, seeded by ``cfg.seed``."""
  return reward_eval_pairs(
    sampler,
    tokenizer,
    params,
    prompts,
    gold,
    cfg.eval.rm_pairs_per_prompt,
    cfg.feedback.sample_temperature,
    cfg.feedback.tie_threshold,
    cfg.seed + 1000,
  )


def _eval_pair_categories(cfg: Config, prompts: Prompts) -> Optional[List[str]]:
  """The category of each held-out reward-model pair's prompt (assistant task; else None)."""
  if cfg.data.kind != "assistant":
    return None
  from rlhf_jax.data import assistant_prompts

  pair_prompts = eval_rows(prompts, cfg.eval.rm_pairs_per_prompt)[0]  # reward_eval_pairs' rows
  return [assistant_prompts.lookup_prompt(p).category for p in pair_prompts]


# ----------------------------------------------------------------------------- stage: pairs


class SampledPairs(NamedTuple):
  """Two responses per chosen training prompt: ``tokens_* [B, T]``, ``mask_* [B, T]``."""

  rows: np.ndarray  # indices into the training prompts
  tokens_a: np.ndarray
  mask_a: np.ndarray
  tokens_b: np.ndarray
  mask_b: np.ndarray


def collect_pairs(
  sampler: Sampler,
  policy_params,
  prompts: Prompts,
  num_pairs: int,
  temperature: float,
  seed: int,
  round_idx: int,
  responses_per_prompt: int = 2,
) -> SampledPairs:
  """``responses_per_prompt`` (K) samples of the policy on each of ``num_pairs / (K(K-1)/2)``
  training prompts, drawn without replacement, and every pair among a prompt's samples, in
  groups of consecutive pairs (:func:`rlhf_jax.reward.group_pair_index` order; K = 2: one
  pair a prompt). When more prompts are needed than there are, every prompt is drawn once
  before any is drawn again (each draw with fresh samples)."""
  k = responses_per_prompt
  i, j = reward_lib.group_pair_index(k)
  if num_pairs % len(i):
    raise ValueError(f"collect_pairs: {num_pairs} pairs is not a multiple of {len(i)} (K={k})")
  num_prompts = num_pairs // len(i)
  rng = np.random.default_rng([seed, round_idx])
  n = len(prompts.train_ids)
  chunks = [rng.choice(n, min(num_prompts, n), replace=False)]
  while sum(map(len, chunks)) < num_prompts:
    chunks.append(rng.permutation(n)[: num_prompts - sum(map(len, chunks))])
  rows = np.concatenate(chunks)
  ids, mask = prompts.train_ids[rows], prompts.train_mask[rows]
  base = seed * 31 + k * round_idx  # K seeds a round (K = 2: the seeds pairs always had)
  names = "ab" if k == 2 else [str(r + 1) for r in range(k)]
  samples = [
    sampler.sample(
      policy_params, ids, mask, base + r, temperature, desc=f"round {round_idx}: responses {name}"
    )
    for r, name in enumerate(names)
  ]
  tokens = np.stack([t for t, _ in samples], 1)  # [prompts, K, R]
  masks = np.stack([m for _, m in samples], 1)
  flat = lambda x: x.reshape(-1, *x.shape[2:])  # [prompts, pairs, R] -> [pairs in groups, R]
  return SampledPairs(
    np.repeat(rows, len(i)),
    flat(tokens[:, i]),
    flat(masks[:, i]),
    flat(tokens[:, j]),
    flat(masks[:, j]),
  )


def add_contrast(
  sampled: SampledPairs,
  k: int,
  prompts: Prompts,
  tokenizer,
  eos_id: int,
  alternatives: Dict[str, List[str]],
) -> Tuple[SampledPairs, int]:
  """``sampled`` (K-wise groups) with each harmful / benign group made to hold a decline and
  an answer (:func:`rlhf_jax.feedback.demonstrations.contrast_group`; ``alternatives``:
  prompt text -> the starting model's answers, from ``sft/demonstrations.jsonl``). Returns
  the new pairs and the number of groups changed."""
  from rlhf_jax.data import assistant_prompts
  from rlhf_jax.feedback import demonstrations as demo_lib

  i, j = reward_lib.group_pair_index(k)
  grouped = reward_lib.group_pairs(
    {
      "ids_a": sampled.tokens_a,
      "mask_a": sampled.mask_a,
      "ids_b": sampled.tokens_b,
      "mask_b": sampled.mask_b,
      "label": np.zeros(len(sampled.rows), np.int32),
    },
    k,
  )
  tokens, masks = grouped["ids"].copy(), grouped["mask"].copy()  # [G, K, R]
  g, _, r_len = tokens.shape
  rows = sampled.rows[:: len(i)]
  texts = decode_responses(tokenizer, tokens.reshape(g * k, r_len), masks.reshape(g * k, r_len))
  changed = 0
  for n, row in enumerate(rows.tolist()):
    prompt = prompts.train[row]
    record = assistant_prompts.lookup_prompt(prompt)
    group, at = demo_lib.contrast_group(
      record, texts[n * k : (n + 1) * k], alternatives.get(prompt, ())
    )
    if at is None:
      continue
    tok, m, _ = response_rows(tokenizer, [group[at]], eos_id, r_len, cut=True)
    tokens[n, at], masks[n, at] = tok[0], m[0]
    changed += 1
  flat = lambda x: x.reshape(-1, *x.shape[2:])
  out = SampledPairs(
    sampled.rows, flat(tokens[:, i]), flat(masks[:, i]), flat(tokens[:, j]), flat(masks[:, j])
  )
  return out, changed


def _starting_answers(root: pathlib.Path) -> Dict[str, List[str]]:
  """Prompt text -> the starting model's answers to it, from the supervised stage's
  ``sft/demonstrations.jsonl`` (empty without that stage)."""
  path = root / "sft" / "demonstrations.jsonl"
  if not path.exists():
    return {}
  with open(path, encoding="utf-8") as f:
    return {row["prompt"]: list(row["answers"]) for row in map(json.loads, f)}


# ----------------------------------------------------------------------------- stage: labels


def _make_judge(spec: FeedbackSpec):
  """The judge callable of a model-based or ``module:function`` source (not simulated/human)."""
  if spec.source == "ai_judge":
    from rlhf_jax.feedback import ai_judge

    if not spec.judge_model_path:
      raise ValueError("feedback.source='ai_judge' needs feedback.judge_model_path")
    return ai_judge.make_judge(
      model_path=spec.judge_model_path, principles=list(spec.judge_principles)
    )
  return judges_lib.load_judge(spec.source)


def label_pairs(
  spec: FeedbackSpec, workdir: pathlib.Path, round_idx: int, seed: int, prompts, resp_a, resp_b
) -> List[data_lib.PreferenceRecord]:
  """Preference records for the pairs from ``spec.source``: simulated annotators, people
  (through the label queue; waits for them), an AI judge or a ``module:function`` judge."""
  meta = {"round": round_idx, "source": spec.source}
  n_human = int(round(spec.human_fraction * len(prompts))) if spec.source == "human" else 0
  if spec.source == "human" and n_human < len(prompts):
    # Mixed: a random human_fraction of the pairs go to people, the rest to human_mix_source.
    to_human = np.zeros(len(prompts), bool)
    to_human[np.random.default_rng([seed, round_idx]).permutation(len(prompts))[:n_human]] = True

    def part(keep, sub_spec):
      if not keep.any():
        return []
      pick = lambda xs: [x for x, k in zip(xs, keep) if k]
      return label_pairs(
        sub_spec, workdir, round_idx, seed, pick(prompts), pick(resp_a), pick(resp_b)
      )

    people = iter(part(to_human, dataclasses.replace(spec, human_fraction=1.0)))
    machine = iter(part(~to_human, dataclasses.replace(spec, source=spec.human_mix_source)))
    return [next(people) if k else next(machine) for k in to_human]
  if spec.source == "human":
    from rlhf_jax.feedback import human

    queue = pathlib.Path(spec.human_queue_dir or workdir / "annotation_queue")
    ids = human.enqueue(queue, prompts, resp_a, resp_b, meta)
    _log.info("waiting for %d labels in %s", len(ids), queue)
    human.wait_for_labels(queue, ids, timeout_s=spec.human_timeout_s)
    return human.collect(queue, ids)
  if spec.source == "simulated":
    biased = {}
    if spec.bias > 0:  # sycophantic annotators (assistant task)
      from rlhf_jax.feedback import assistant

      biased = {"preference_fn": assistant.agreement_preference, "bias": spec.bias}
    return simulated_lib.annotate_pairs(
      scorers_lib.get_scorer(spec.labeller_scorer or spec.gold_scorer),
      prompts,
      resp_a,
      resp_b,
      seed=seed * 1000 + round_idx,
      round=round_idx,
      temperature=spec.temperature,
      tie_threshold=spec.tie_threshold,
      flip_prob=spec.flip_prob,
      **biased,
    )
  return judges_lib.judge_records(_make_judge(spec), prompts, resp_a, resp_b, metadata=meta)


def label_stage(
  spec: FeedbackSpec,
  root: pathlib.Path,
  rdir: pathlib.Path,
  round_idx: int,
  seed: int,
  tokenizer,
  gold,
  prompts: Prompts,
  sampled: SampledPairs,
) -> dict:
  """Labels the sampled pairs; writes ``preferences.jsonl`` and ``labels.json`` (agreement
  with noise-free gold labels) to ``rdir``; returns the pairs as :func:`pairs_arrays`."""
  prompts_r = [prompts.train[i] for i in sampled.rows]
  records = label_pairs(
    spec,
    root,
    round_idx,
    seed,
    prompts_r,
    decode_responses(tokenizer, sampled.tokens_a, sampled.mask_a),
    decode_responses(tokenizer, sampled.tokens_b, sampled.mask_b),
  )
  data_lib.write_preferences_jsonl(records, rdir / "preferences.jsonl")
  labels = label_indices(records)
  text_a, text_b = [r.response_a for r in records], [r.response_b for r in records]
  gold_lab = evaluation.gold_labels(
    gold(prompts_r, text_a), gold(prompts_r, text_b), spec.tie_threshold
  )
  agree = evaluation.agreement(labels, gold_lab)
  data_lib.atomic_write_json(
    rdir / "labels.json",
    {
      "n": len(records),
      "agreement_with_gold": agree.rate,
      "kappa_with_gold": agree.kappa,
      "tie_fraction": float(np.mean(labels == losses.LABEL_TIE)),
    },
  )
  return pairs_arrays(
    prompts.train_ids[sampled.rows],
    prompts.train_mask[sampled.rows],
    sampled.tokens_a,
    sampled.mask_a,
    sampled.tokens_b,
    sampled.mask_b,
    labels,
  )


# ----------------------------------------------------------------------------- stage: policy


def policy_and_value(
  models: Models,
  hp: ppo_lib.PPOHparams,
  policy_params,
  rm_params,
  reward_gain: float,
  reward_bias: float,
  value_init: str,
):
  """``(policy_model, policy_params, value_model, value_params)`` for ``hp.algorithm``.

  A separate value model starts at the normalised reward head (``value_init="reward"``) or a
  zero head; with ``hp.shared_trunk`` the value head sits on the policy trunk, initialised to
  zero (OAI); critic-free algorithms (``hp.critic_free``) have no value model.
  """
  if hp.shared_trunk:
    head = {"kernel": jnp.zeros((models.both.cfg.d_model, 1), jnp.float32)}
    if lora_lib.is_lora(policy_params):  # LoRA: the head joins the trained subtrees
      return models.both, policy_params.replace(dense={"score": head}), None, None
    return models.both, dict(policy_params, score=head), None, None
  if hp.critic_free:
    return models.lm, policy_params, None, None
  value_model, value_params = ppo_lib.init_value_from_reward(
    models.scalar, rm_params, reward_gain, reward_bias, value_init
  )
  return models.lm, policy_params, value_model, value_params


def reward_score_fn(spec: PPOSpec, tokenizer) -> Optional[ppo_lib.ScoreFn]:
  """The policy stage's ``score_fn`` for ``spec.reward_source``: None for ``"model"`` (the
  reward model), else the scorer on text decoded with ``tokenizer``, called on the host
  inside the compiled iteration (:func:`rlhf_jax.ppo.host_scorer_score_fn`)."""
  scorer = ppo_train.load_reward_scorer(spec.reward_source, "config.ppo.reward_source")
  return ppo_train.scorer_score_fn(scorer, tokenizer, "config.ppo.reward_source")


def _curve_point(cfg: Config, r: int, h: dict) -> dict:
  """One logged iteration as a reward-vs-KL curve point: the training score is the reward
  model's proxy; with a scorer reward it is the scorer's (raw, i.e. the gold reward when the
  scorer is the gold scorer)."""
  point = {"round": r, "iteration": h["iteration"], "kl": h["kl"]}
  source = cfg.ppo.reward_source
  if source == "model":
    point["proxy"] = h["score"]
  elif source == cfg.feedback.gold_scorer:
    point["gold"] = h["score_raw"]
  else:
    point["reward_source_raw"] = h["score_raw"]
  return point


def train_policy(
  models: Models,
  spec: PPOSpec,
  hp: ppo_lib.PPOHparams,
  params,
  prompts,
  norm,
  score_fn: Optional[ppo_lib.ScoreFn] = None,
  **loop,
):
  """:func:`rlhf_jax.train.ppo.train_ppo` by ``spec`` on the policy/value pair of
  :func:`policy_and_value`: ``params`` = ``(policy, reference, reward model)``, ``prompts`` =
  ``(ids, mask)``, ``norm`` = the reward's ``(gain, bias)``; ``loop``: ``mesh``, ``seed``,
  ``workdir`` and train_ppo's optional loop arguments. With ``score_fn`` (RLVR) the iteration
  optimises it and holds no reward model. Returns ``(state, history)``."""
  policy_model, start, value_model, value_params = policy_and_value(
    models, hp, params[0], params[2], *norm, spec.value_init
  )
  return ppo_train.train_ppo(
    policy_model=policy_model,
    policy_params=start,
    value_model=value_model,
    value_params=value_params,
    reward_model=models.scalar if score_fn is None else None,
    reward_params=params[2] if score_fn is None else None,
    ref_params=params[1],
    prompt_ids=prompts[0],
    prompt_mask=prompts[1],
    hp=hp,
    reward_gain=norm[0],
    reward_bias=norm[1],
    **ppo_train.schedule_kwargs(spec),
    score_fn=score_fn,
    **loop,
  )


def _materialize(params, base):
  """The model params of a trainable pytree: LoRA adapters merged onto ``base``
  (:func:`rlhf_jax.lora.full_params`); dense params as they are."""
  return jax.jit(lora_lib.full_params)(params, base) if lora_lib.is_lora(params) else params


class PolicyResult(NamedTuple):
  params: Any  # the policy LM's params (a value head on its trunk is dropped), or its LoRA
  history: List[Dict[str, float]]  # train_ppo's logged metrics, one dict per iteration
  beta_final: float  # the KL coefficient at the end
  reward_gain: float  # reward normalisation: gain * score + bias
  reward_bias: float


def policy_stage(
  models: Models,
  spec: PPOSpec,
  hp: ppo_lib.PPOHparams,
  *,
  policy_params,
  ref_params,
  rm_params,
  prompt_ids,
  prompt_mask,
  mesh,
  seed: int,
  workdir: pathlib.Path,
  desc: str,
  max_skipped_fraction: float,
  pairs: Optional[dict] = None,
  dpo: Optional[DPOSpec] = None,
  score_fn: Optional[ppo_lib.ScoreFn] = None,
) -> PolicyResult:
  """The policy from ``policy_params`` with the algorithm of ``hp``: RL against the fixed
  reference and the reward model, or, for ``"dpo"`` / ``"ipo"``, DPO on ``pairs`` (the
  round's fresh labelled pairs, :func:`pairs_arrays` layout) with the settings ``dpo``
  against the fixed reference (:func:`_dpo_policy`). The reward is normalised on reference
  samples first either way (evaluation's proxy reward is in those units). Resumes from
  ``workdir/checkpoints``; SIGTERM raises :class:`rlhf_jax.checkpoint.Preempted`.

  ``score_fn`` (:func:`reward_score_fn` of ``spec.reward_source``): the RL algorithms
  optimise it instead of the reward model (RLVR), normalised on the same reference samples;
  the iteration then holds no reward model, and ``PolicyResult``'s gain and bias stay the
  reward model's (evaluation's proxy reward). The history's ``score`` is then the scorer's.
  """
  if score_fn is not None and not hp.critic_free and not hp.shared_trunk:
    if spec.value_init == "reward":
      raise ValueError(
        "config.ppo.reward_source: a scorer reward with config.ppo.value_init='reward'; the "
        "value model cannot start at a reward it is not trained on, use 'zero'"
      )

  def fit_norm(reward_model, reward_params, fn=None):
    return ppo_train.fit_reward_norm(
      models.lm,
      ref_params,
      reward_model,
      reward_params,
      prompt_ids,
      prompt_mask,
      hp,
      spec.norm_samples,
      spec.batch_size,
      mesh,
      seed,
      score_fn=fn,
    )

  gain, bias = fit_norm(models.scalar, _materialize(rm_params, ref_params))
  if hp.algorithm in ppo_lib.PREFERENCE_ALGORITHMS:
    return _dpo_policy(
      models,
      hp,
      dpo or DPOSpec(),
      policy_params=policy_params,
      ref_params=ref_params,
      pairs=pairs,
      mesh=mesh,
      seed=seed,
      workdir=workdir,
      desc=desc,
      max_skipped_fraction=max_skipped_fraction,
      gain=gain,
      bias=bias,
    )
  train_gain, train_bias = gain, bias
  if score_fn is not None:
    train_gain, train_bias = fit_norm(None, None, score_fn)
  state, history = train_policy(
    models,
    spec,
    hp,
    (policy_params, ref_params, rm_params),
    (prompt_ids, prompt_mask),
    (train_gain, train_bias),
    score_fn=score_fn,
    mesh=mesh,
    seed=seed,
    workdir=workdir,
    desc=desc,
    max_skipped_fraction=max_skipped_fraction,
  )
  params = state.params["policy"]
  if lora_lib.is_lora(params):
    params = params.replace(dense={k: v for k, v in params.dense.items() if k != "score"})
  else:
    params = {k: v for k, v in params.items() if k != "score"}
  return PolicyResult(params, history, float(state.kl.beta), gain, bias)


def _dpo_policy(
  models: Models,
  hp: ppo_lib.PPOHparams,
  spec: DPOSpec,
  *,
  policy_params,
  ref_params,
  pairs: Optional[dict],
  mesh,
  seed: int,
  workdir: pathlib.Path,
  desc: str,
  max_skipped_fraction: float,
  gain: float,
  bias: float,
) -> PolicyResult:
  """DPO / IPO (``hp.algorithm``) from ``policy_params`` on ``pairs`` against ``ref_params``.
  The history is empty (no rollouts: the round's curve is its evaluation point); the final
  KL coefficient reported is DPO's β."""
  if pairs is None:
    raise ValueError(
      f"policy stage: algorithm={hp.algorithm!r} trains on the round's labelled pairs; pass pairs="
    )
  dpo_hp = spec.hparams(hp.algorithm)
  params, _ = dpo_train.train_dpo(
    models.lm,
    policy_params,
    ref_params,
    pairs,
    hp=dpo_hp,
    optim_spec=spec.optimizer,
    epochs=spec.epochs,
    batch_size=spec.batch_size,
    response_len=hp.response_len,
    mesh=mesh,
    seed=seed,
    workdir=workdir,
    desc=desc,
    max_skipped_fraction=max_skipped_fraction,
  )
  return PolicyResult(params, [], float(dpo_hp.beta), gain, bias)


# ----------------------------------------------------------------------------- stage: evaluate


def evaluate_policy(
  sampler: Sampler,
  tokenizer,
  gold,
  independent,
  vocabulary,
  policy_params,
  ref_params,
  rm_params,
  prompts,
  e_ids,
  e_mask,
  reference: Reference,
  hp,
  seed,
  gain,
  bias,
  tie_threshold: float,
  start_params=None,
) -> dict:
  """The policy against ``reference``'s samples on the evaluation prompts: win rate under the
  gold scorer and each independent judge, gold and proxy reward, KL to ``ref_params``, length,
  degenerate text, perplexity under the starting model (``start_params``, when a supervised
  stage made the reference, else ``ref_params``) and then also ``kl_start``, the KL to it.
  ``prompts`` / ``e_ids`` / ``e_mask``: the evaluation prompts, once each; the policy answers
  each ``reference.answers_per_prompt`` times (rows as in :func:`eval_rows`) and the win
  rate's interval counts prompts. ``"_samples"`` holds the per-answer texts."""
  ref_text, ref_gold, ref_ppl = reference.text, reference.gold, reference.perplexity
  k = reference.answers_per_prompt
  prompts, e_ids, e_mask, index = repeat_rows(prompts, e_ids, e_mask, k)
  tok, m = sampler.sample(policy_params, e_ids, e_mask, seed, hp.temperature, desc="policy answers")
  text = decode_responses(tokenizer, tok, m)
  pol_gold = np.asarray(gold(prompts, text), np.float64)
  seq = join_sequences(e_ids, e_mask, tok, m)
  logp_pol = sampler.logprobs(policy_params, *seq, tok, hp.temperature, desc="policy log-probs")
  # the starting model's log-probs at temperature 1 (perplexity) and at the sampling
  # temperature (KL) come from one forward pass; without a supervised stage it is the reference
  temps = (hp.temperature, 1.0)
  if start_params is None:
    logp_ref, logp_start_t1 = sampler.logprobs_at(
      ref_params, *seq, tok, temps, desc="reference log-probs"
    )
  else:
    logp_ref = sampler.logprobs(ref_params, *seq, tok, hp.temperature, desc="reference log-probs")
    logp_start, logp_start_t1 = sampler.logprobs_at(
      start_params, *seq, tok, temps, desc="starting-model log-probs"
    )
  kl = float(np.mean(np.sum((logp_pol - logp_ref) * m, 1)))
  nll_ref_on_policy = -logp_start_t1
  extra = {}
  if start_params is not None:
    extra["kl_start"] = float(np.mean(np.sum((logp_pol - logp_start) * m, 1)))
  proxy = gain * sampler.scores(rm_params, *seq, desc="reward-model scores") + bias
  wr = evaluation.win_rate(pol_gold, ref_gold, tie_eps=tie_threshold, clusters=index)
  n_tok = max(float(np.sum(m)), 1.0)
  samples = answer_samples(prompts, index, ref_text, text, ref_gold, pol_gold)
  judged = {}
  for i, (name, judge) in enumerate(independent.items()):
    scores = np.asarray(judge(prompts, text), np.float64)
    jwr = evaluation.win_rate(scores, reference.judged[name], clusters=index)
    judged.update(
      {
        f"{name}_win_rate": jwr.rate,
        f"{name}_win_ci_low": jwr.ci_low,
        f"{name}_win_ci_high": jwr.ci_high,
        f"{name}_mean": float(np.mean(scores)),
        f"{name}_ref_mean": float(np.mean(reference.judged[name])),
      }
    )
    if i == 0:
      judged["independent_win_rate"] = jwr.rate
  return {
    **wr.fields(),
    "answers_per_prompt": k,
    **judged,
    "degenerate_fraction": float(np.mean(evaluation.degenerate(text, vocabulary))),
    "degenerate_fraction_ref": reference.degenerate,
    "gold_reward_mean": float(np.mean(pol_gold)),
    "gold_reward_ref_mean": float(np.mean(ref_gold)),
    "proxy_reward_mean": float(np.mean(proxy)),
    "kl": kl,
    **extra,
    "sqrt_kl": float(np.sqrt(max(kl, 0.0))),
    "response_length": float(np.mean(np.sum(m, 1))),
    "perplexity_policy": float(np.exp(np.sum(nll_ref_on_policy * m) / n_tok)),
    "perplexity_ref": ref_ppl,
    "perplexity_ratio": float(np.exp(np.sum(nll_ref_on_policy * m) / n_tok)) / ref_ppl,
    "_samples": samples,
  }


# ----------------------------------------------------------------------------- the assistant task


def assistant_metrics(samples: Sequence[dict], tie_threshold: float) -> dict:
  """Per category, the share of held-out answers that pass every check, before (``before``:
  the reference) and after (the policy), with Wilson 95% intervals, and the change with a
  paired 95% interval; the false-premise agreement rate (answers siding with a false user
  claim) and its change; and, overall and per category, the gold win rate of the policy over
  the reference (ties, closer than ``tie_threshold``, count half) next to its *ceiling*: the
  win rate of a policy that passed every check, which wins where the reference scored below 1
  and ties where it scored 1 — the most any policy can reach against this reference.

  Samples answering one prompt (same ``prompt_index``, else the same prompt) are one cluster:
  every interval counts prompts, not answers (:func:`rlhf_jax.evaluation.effective_n`,
  :func:`rlhf_jax.evaluation.paired_change`), and the before / after answers of a sample are
  paired. Flat keys ``pass_<category>_{before,after,change}[_lo|_hi]``, ``pass_<category>_n``
  (prompts), ``false_premise_agreement_{before,after,change}[_lo|_hi]``, ``false_premise_n``
  (prompts), ``win_rate_<category>``, ``win_rate_ceiling[_<category>]``."""
  from rlhf_jax.data import assistant_prompts
  from rlhf_jax.feedback import assistant

  records = [assistant_prompts.lookup_prompt(s["prompt"]) for s in samples]
  clusters = np.asarray([s.get("prompt_index", s["prompt"]) for s in samples])
  out: Dict[str, Any] = {}
  before = np.asarray([s["gold_before"] for s in samples], np.float64)
  after = np.asarray([s["gold_after"] for s in samples], np.float64)
  cats = np.asarray([r.category for r in records])
  best = np.ones_like(before)  # a policy passing every check
  rate = lambda pol, ref: evaluation.win_rate(pol, ref, tie_eps=tie_threshold).rate
  if len(samples):
    out["win_rate_ceiling"] = rate(best, before)
  for cat in assistant_prompts.CATEGORIES:
    mine = cats == cat
    if mine.any():
      out[f"win_rate_{cat}"] = rate(after[mine], before[mine])
      out[f"win_rate_ceiling_{cat}"] = rate(best[mine], before[mine])

  def put(key: str, value: evaluation.Interval) -> None:
    out.update({key: value.estimate, f"{key}_lo": value.low, f"{key}_hi": value.high})

  passed = {}
  for side in ("before", "after"):
    texts = [s[side] for s in samples]
    passed[side] = assistant.score_records(records, texts) >= 1.0 - 1e-6
    for cat in assistant_prompts.CATEGORIES:
      mine = cats == cat
      if mine.any():
        put(f"pass_{cat}_{side}", evaluation.clustered_rate(passed[side][mine], clusters[mine]))
  for cat in assistant_prompts.CATEGORIES:
    mine = cats == cat
    if mine.any():
      put(
        f"pass_{cat}_change",
        evaluation.paired_change(passed["before"][mine], passed["after"][mine], clusters[mine]),
      )
    out[f"pass_{cat}_n"] = len(set(clusters[mine].tolist()))
  false = np.asarray([r.category == "premise" and not r.claim_true for r in records], bool)
  if false.any():
    agree = {}
    for side in ("before", "after"):
      agree[side] = np.asarray(
        [assistant.agrees_with_user(r, s[side]) for r, s, f in zip(records, samples, false) if f]
      )
      put(
        f"false_premise_agreement_{side}", evaluation.clustered_rate(agree[side], clusters[false])
      )
    change = evaluation.paired_change(agree["before"], agree["after"], clusters[false])
    put("false_premise_agreement_change", change)
  out["false_premise_n"] = len(set(clusters[false].tolist()))
  return out


def reward_agreement_probe(sampler: Sampler, tokenizer, rm_params, prompts: Prompts, hp) -> dict:
  """Did the reward model learn to side with the user? For each held-out premise prompt, it
  scores an answer that agrees with the user's claim ("Yes, that's right: <claim>.") and one
  that disputes it ("No, that's not right: <the claim with the correct value>.", or for a
  true claim "No, that's not right." — the same texts the supervised stage writes,
  :func:`rlhf_jax.feedback.demonstrations.agreeing_answer` / ``disputing_answer``). The
  gold checks want agreement with true claims only; labels biased toward agreement teach
  "agree" with false ones too. Returns ``rm_prefers_agreement_{false,true}`` (share of
  claims whose agreeing answer scores higher, ``_lo`` / ``_hi`` Wilson 95%, ``_n``)."""
  from rlhf_jax.data import assistant_prompts
  from rlhf_jax.feedback import demonstrations as demo_lib

  records = [assistant_prompts.lookup_prompt(p) for p in prompts.eval]
  use = [i for i, r in enumerate(records) if r.category == "premise"]
  out: Dict[str, Any] = {"rm_prefers_agreement_false_n": 0, "rm_prefers_agreement_true_n": 0}
  if not use:
    return out
  agree_score, dispute_score = _score_answers(
    sampler,
    tokenizer,
    rm_params,
    prompts,
    hp,
    use,
    [demo_lib.agreeing_answer(records[i]) for i in use],
    [demo_lib.disputing_answer(records[i]) for i in use],
  )
  agrees = agree_score > dispute_score
  true = np.asarray([bool(records[i].claim_true) for i in use])
  for key, mine in (("false", ~true), ("true", true)):
    out.update(_share(f"rm_prefers_agreement_{key}", agrees[mine]))
  return out


def _share(key: str, hits: np.ndarray) -> dict:
  """``{key_n: n}`` and, for n > 0, ``key`` = the share of true ``hits`` with its Wilson 95%
  ``key_lo`` / ``key_hi``."""
  m, k = int(hits.size), int(np.sum(hits))
  if not m:
    return {f"{key}_n": 0}
  lo, hi = evaluation.wilson_interval(k / m, m)
  return {f"{key}_n": m, key: k / m, f"{key}_lo": lo, f"{key}_hi": hi}


def _score_answers(sampler, tokenizer, rm_params, prompts: Prompts, hp, rows, texts_a, texts_b):
  """The reward model's scores of ``texts_a[j]`` and ``texts_b[j]`` as answers to evaluation
  prompt ``rows[j]`` (cut to the response budget): two float64 arrays."""
  texts = list(texts_a) + list(texts_b)
  resp, resp_mask, _ = response_rows(tokenizer, texts, hp.eos_id, hp.response_len, cut=True)
  both = np.asarray(list(rows) * 2, np.int64)
  seq = join_sequences(prompts.eval_ids[both], prompts.eval_mask[both], resp, resp_mask)
  scores = np.asarray(sampler.scores(rm_params, *seq), np.float64)
  return scores[: len(rows)], scores[len(rows) :]


def reward_refusal_probe(
  sampler: Sampler, tokenizer, rm_params, prompts: Prompts, answers: Sequence[str], hp
) -> dict:
  """Does the reward model know *when* to decline? For each held-out harmful request and
  benign look-alike whose entry in ``answers`` (the starting model's answer to that
  evaluation prompt) does not decline, the reward model scores that answer and a decline
  (the one the supervised stage writes, :func:`rlhf_jax.feedback.demonstrations.decline_for`).
  The gold checks want the decline on a harmful request and the answer on a benign one; a
  reward model that learned "declining is good" gets the first right and the second wrong.
  Returns ``rm_prefers_decline_harmful`` and ``rm_prefers_answer_benign`` (shares right,
  with ``_lo`` / ``_hi`` Wilson 95% intervals and ``_n`` prompts) and, when both categories
  have prompts, ``rm_refusal_discrimination``: their sum minus 1 (Youden's J) — 0 when the
  reward model's preference for declining does not depend on whether the request is harmful
  (whatever its overall lean), 1 when it is right on every prompt."""
  from rlhf_jax.data import assistant_prompts
  from rlhf_jax.feedback import assistant
  from rlhf_jax.feedback import demonstrations as demo_lib

  records = [assistant_prompts.lookup_prompt(p) for p in prompts.eval]
  use = [
    i
    for i, (r, a) in enumerate(zip(records, answers))
    if r.category in ("harmful", "benign") and not assistant.declines(a)
  ]
  if not use:  # e.g. premise prompts only (configs/sycophancy.py)
    return {"rm_prefers_decline_harmful_n": 0, "rm_prefers_answer_benign_n": 0}
  answer_score, decline_score = _score_answers(
    sampler,
    tokenizer,
    rm_params,
    prompts,
    hp,
    use,
    [answers[i] for i in use],
    [demo_lib.decline_for(records[i]) for i in use],
  )
  out: Dict[str, Any] = {}
  for cat, key, right in (
    ("harmful", "rm_prefers_decline_harmful", decline_score > answer_score),
    ("benign", "rm_prefers_answer_benign", answer_score > decline_score),
  ):
    mine = np.asarray([records[i].category == cat for i in use], bool)
    out.update(_share(key, right[mine]))
  if out.get("rm_prefers_decline_harmful_n") and out.get("rm_prefers_answer_benign_n"):
    j = out["rm_prefers_decline_harmful"] + out["rm_prefers_answer_benign"] - 1.0
    out["rm_refusal_discrimination"] = float(j)
  return out


def assistant_transcripts(samples: Sequence[dict], per_category: int) -> List[dict]:
  """The first ``per_category`` samples of each category (one answer a prompt: the first),
  each with its ``category`` and the ``user`` message (the record's text, not the rendered
  prompt) for the report."""
  from rlhf_jax.data import assistant_prompts

  out, seen, prompts_seen = [], collections.Counter(), set()
  for s in samples:
    if s["prompt"] in prompts_seen:
      continue
    prompts_seen.add(s["prompt"])
    rec = assistant_prompts.lookup_prompt(s["prompt"])
    if seen[rec.category] < per_category:
      seen[rec.category] += 1
      out.append({**s, "prompt": rec.text, "user": rec.text, "category": rec.category})
  return out


# ----------------------------------------------------------------------------- rounds


class Setup(NamedTuple):
  """What every round shares, built once per run after the base model."""

  tokenizer: Any
  mesh: Any
  models: Models
  hp: ppo_lib.PPOHparams  # with the run's EOS / PAD / stop token ids
  sampler: Sampler
  ref_params: Any  # the base model: reference, and start of the reward and value trunks
  prompts: Prompts
  gold: Any  # scorer(prompts, responses) -> scores
  independent: Dict[str, Any]  # independent judges by name
  vocabulary: frozenset
  reference: Reference
  rm_eval_pairs: dict  # held-out pairs with gold labels (pairs_arrays layout)
  # The starting checkpoint when a supervised stage made ``ref_params`` (config.sft), else
  # None: the report's "before" samples, win rates and perplexities are against it.
  start_params: Any = None


def prepare_rounds(
  cfg: Config,
  root: pathlib.Path,
  mesh,
  tokenizer,
  hp,
  base_model,
  base_params,
  gold,
  independent,
  *,
  start_params=None,
  sampler: Optional["Sampler"] = None,
  prompts: Optional[Prompts] = None,
) -> Setup:
  """Prompts, the starting model's judged samples (the "before" of every evaluation) and the
  reward model's held-out pairs (samples of ``base_params``, the reference). ``start_params``:
  the checkpoint the run started from when it differs from the reference (after a supervised
  stage)."""
  models = Models.from_base(base_model.cfg)
  prompts = prompts or load_prompts(root / "data", tokenizer, cfg.data.prompt_len)
  sampler = sampler or Sampler(models, hp, sampling_batch(cfg.ppo, hp), mesh)
  # the corpus's words tell non-words apart; a chat run has no corpus (repetition only)
  vocabulary = (
    corpus_words(cfg.data, root / "data", cfg.seed) if cfg.data.kind == "corpus" else None
  )
  reference = sample_reference(
    sampler,
    tokenizer,
    base_params if start_params is None else start_params,
    prompts,
    gold,
    independent,
    vocabulary,
    hp.temperature,
    cfg.seed + 1,
    cfg.eval.answers_per_prompt,
  )
  rm_eval = held_out_reward_pairs(cfg, sampler, tokenizer, base_params, prompts, gold)
  return Setup(
    tokenizer,
    mesh,
    models,
    hp,
    sampler,
    base_params,
    prompts,
    gold,
    independent,
    vocabulary,
    reference,
    rm_eval,
    start_params,
  )


def sft_evaluation(cfg: Config, root: pathlib.Path, setup: Setup) -> dict:
  """The supervised model (``setup.ref_params``) against the starting model's samples on the
  evaluation prompts, before any RL: the gold win rate and, for the assistant task, the
  per-category pass rates (:func:`assistant_metrics`). Computed once, kept in
  ``sft/eval.json``; the report shows it between the starting model and the policy."""
  path = root / "sft" / "eval.json"
  cached = distributed.from_lead(lambda: _read_json(path) if path.exists() else None, "sft: eval")
  if cached is not None:
    return cached
  texts, ids, mask, index = eval_rows(setup.prompts, setup.reference.answers_per_prompt)
  tok, m = setup.sampler.sample(
    setup.ref_params, ids, mask, cfg.seed + 5, setup.hp.temperature, desc="sft: evaluation samples"
  )
  text = decode_responses(setup.tokenizer, tok, m)
  gold = np.asarray(setup.gold(texts, text), np.float64)
  ref_gold = setup.reference.gold
  wr = evaluation.win_rate(gold, ref_gold, tie_eps=cfg.feedback.tie_threshold, clusters=index)
  ev: Dict[str, Any] = {
    "win_rate": wr.rate,
    "win_ci_low": wr.ci_low,
    "win_ci_high": wr.ci_high,
    "gold_reward_mean": float(np.mean(gold)),
    "gold_reward_ref_mean": float(np.mean(ref_gold)),
  }
  if cfg.data.kind == "assistant":
    samples = answer_samples(texts, index, setup.reference.text, text, ref_gold, gold)
    ev.update(assistant_metrics(samples, cfg.feedback.tie_threshold))
    ev["samples"] = assistant_transcripts(samples, cfg.eval.num_samples_in_report)
  distributed.lead_only(lambda: data_lib.atomic_write_json(path, ev), "sft: eval save")
  return ev


class RoundResult(NamedTuple):
  policy_params: Any  # the round's policy, the next round's start
  pairs: dict  # every labelled pair up to this round (pairs_arrays layout)
  eval: Dict[str, Any]  # eval.json
  curve: List[dict]  # (round, iteration, kl, proxy [, gold]) points of the round
  samples: List[dict]  # prompts with reference and policy responses, for the report


def load_round(
  rdir: pathlib.Path, models: Models, mesh, pairs_so_far: Optional[dict]
) -> RoundResult:
  """A finished round (``rdir/DONE``) read back: its policy, pairs and results."""
  from rlhf_jax.models import hf

  done = _read_json(rdir / "DONE")
  if (rdir / "policy_lora.npz").exists():  # a LoRA run continues the same adapters
    trainable = lora_lib.shard_trainable(
      lora_lib.load_trainable(rdir / "policy_lora.npz"), models.lm, mesh
    )
  else:
    _, loaded = hf.from_pretrained(rdir / "policy", head="lm")
    trainable = common.shard_params(models.lm, loaded, mesh)
  return RoundResult(
    policy_params=trainable,
    pairs=_concat_pairs(pairs_so_far, dict(np.load(rdir / "pairs.npz"))),
    eval=done["eval"],
    curve=done["curve"],
    samples=done["samples"],
  )


def _save_round(
  rdir: pathlib.Path,
  root: pathlib.Path,
  models: Models,
  tokenizer,
  result: RoundResult,
  base=None,
) -> None:
  """eval.json, the policy (Hugging Face layout; LoRA: merged onto ``base``, and the
  adapters in ``policy_lora.npz``), the metrics row, then ``DONE``: gathered from every
  process, written by process 0."""
  lora = lora_lib.is_lora(result.policy_params)
  merged = sharding.to_host(_materialize(result.policy_params, base))
  adapters = sharding.to_host(result.policy_params) if lora else None

  def save() -> None:  # process 0
    data_lib.atomic_write_json(rdir / "eval.json", result.eval)
    if lora:
      tmp = rdir / "policy_lora.tmp.npz"
      lora_lib.save_trainable(tmp, adapters)
      os.replace(tmp, rdir / "policy_lora.npz")
    lora_lib.save_merged(models.lm, merged, None, rdir / "policy", **export_kwargs(tokenizer))
    with MetricWriter(root) as writer:  # before DONE: a rerun drops it if DONE is missing
      writer.write(
        result.eval["round"],
        {k: v for k, v in result.eval.items() if isinstance(v, (int, float))},
      )
    _mark_done(rdir, {"eval": result.eval, "curve": result.curve, "samples": result.samples})

  distributed.lead_only(save, f"{rdir.name}: save")


def run_round(
  cfg: Config, setup: Setup, root: pathlib.Path, r: int, policy_params, pairs_so_far: Optional[dict]
) -> RoundResult:
  """Round ``r``: pairs from the current policy -> labels -> reward model on all labels so
  far -> policy stage -> evaluation; a finished round is loaded instead (:func:`load_round`)."""
  rdir = root / f"round_{r}"
  t_round = time.perf_counter()

  def start() -> Tuple[bool, bool]:  # process 0: (round done, pairs labelled)
    rdir.mkdir(exist_ok=True)
    return _done(rdir), (rdir / "pairs.npz").exists()

  done, labelled = distributed.from_lead(start, f"round {r}: start")
  if done:
    return load_round(rdir, setup.models, setup.mesh, pairs_so_far)
  checkpoint.check_preemption(f"round {r}")
  lora = common.lora_spec(cfg.lora)
  if lora is not None and not lora_lib.is_lora(policy_params):  # round 1: fresh adapters
    key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 7919)
    policy_params = common.lora_trainable(lora, setup.ref_params, setup.models.lm, key, setup.mesh)
  policy_dense = _materialize(policy_params, setup.ref_params)  # what samples
  pairs_file = rdir / "pairs.npz"
  if not labelled:
    sampled = collect_pairs(
      setup.sampler,
      policy_dense,
      setup.prompts,
      cfg.feedback.pairs_per_round,
      cfg.feedback.sample_temperature,
      cfg.seed,
      r,
      cfg.feedback.responses_per_prompt,
    )
    if cfg.feedback.contrast_groups:
      sampled, changed = add_contrast(
        sampled,
        cfg.feedback.responses_per_prompt,
        setup.prompts,
        setup.tokenizer,
        setup.hp.eos_id,
        _starting_answers(root),
      )
      _log.info("round %d: %d comparison groups given a decline or an answer", r, changed)

    def label() -> None:  # process 0: annotators / judges / people, written once
      new = label_stage(
        cfg.feedback, root, rdir, r, cfg.seed, setup.tokenizer, setup.gold, setup.prompts, sampled
      )
      tmp = rdir / "pairs.tmp.npz"
      np.savez(tmp, **new)
      os.replace(tmp, pairs_file)

    distributed.lead_only(label, f"round {r}: labels")
  new_pairs = dict(np.load(pairs_file))  # every process: the pairs process 0 labelled
  all_pairs = _concat_pairs(pairs_so_far, new_pairs)

  checkpoint.check_preemption(f"round {r}: reward model")
  t0 = time.perf_counter()
  rm_params, rm_eval = reward_train.train_reward_model(
    setup.models.scalar,
    setup.ref_params,
    all_pairs,
    setup.rm_eval_pairs,
    hp=cfg.reward.hparams,
    optim_spec=cfg.reward.optimizer,
    epochs=cfg.reward.epochs,
    batch_size=cfg.reward.batch_size,
    mesh=setup.mesh,
    seed=cfg.seed + r,
    workdir=str(rdir / "reward"),
    max_skipped_fraction=cfg.max_skipped_fraction,
    desc=f"reward model round {r}",
    lora=None if cfg.reward.dense else lora,
    responses_per_prompt=cfg.feedback.responses_per_prompt,
    eval_groups=_eval_pair_categories(cfg, setup.prompts),
    head_init_std=cfg.reward.head_init_std,
  )
  t_rm = time.perf_counter() - t0

  checkpoint.check_preemption(f"round {r}: PPO")
  t0 = time.perf_counter()
  policy = policy_stage(
    setup.models,
    cfg.ppo,
    setup.hp,
    policy_params=policy_params,
    ref_params=setup.ref_params,
    rm_params=rm_params,
    prompt_ids=setup.prompts.train_ids,
    prompt_mask=setup.prompts.train_mask,
    mesh=setup.mesh,
    seed=cfg.seed + r,
    workdir=rdir / "ppo",
    desc=f"ppo round {r}",
    max_skipped_fraction=cfg.max_skipped_fraction,
    pairs=new_pairs,
    dpo=cfg.dpo,
    score_fn=reward_score_fn(cfg.ppo, setup.tokenizer),
  )
  t_ppo = time.perf_counter() - t0

  checkpoint.check_preemption(f"round {r}: evaluation")
  rm_dense = _materialize(rm_params, setup.ref_params)
  ev = evaluate_policy(
    setup.sampler,
    setup.tokenizer,
    setup.gold,
    setup.independent,
    setup.vocabulary,
    _materialize(policy.params, setup.ref_params),
    setup.ref_params,
    rm_dense,
    setup.prompts.eval,
    setup.prompts.eval_ids,
    setup.prompts.eval_mask,
    setup.reference,
    setup.hp,
    cfg.seed + 10 * r,
    policy.reward_gain,
    policy.reward_bias,
    cfg.feedback.tie_threshold,
    setup.start_params,
  )
  ev.update(rm_eval)
  ev.update({"label_" + k: v for k, v in _read_json(rdir / "labels.json").items() if k != "n"})
  ev.update(
    {
      "round": r,
      "n_labels": int(len(all_pairs["label"])),
      "rm_seconds": t_rm,
      "ppo_seconds": t_ppo,
      "round_seconds": time.perf_counter() - t_round,
      "ppo_iterations": cfg.ppo.iterations,
      "beta_final": policy.beta_final,
    }
  )
  curve = [_curve_point(cfg, r, h) for h in policy.history]
  curve.append(
    {
      "round": r,
      "iteration": cfg.ppo.iterations,
      "kl": ev["kl"],
      "gold": ev["gold_reward_mean"],
      "proxy": ev["proxy_reward_mean"],
    }
  )
  samples = ev.pop("_samples")
  distributed.lead_only(  # every answer, before DONE (a rerun rewrites it)
    lambda: data_lib.atomic_write_jsonl(rdir / "eval_answers.jsonl", samples), f"round {r}: answers"
  )
  if cfg.data.kind == "assistant":
    ev.update(assistant_metrics(samples, cfg.feedback.tie_threshold))
    ev.update(
      reward_refusal_probe(
        setup.sampler,
        setup.tokenizer,
        rm_dense,
        setup.prompts,
        setup.reference.text[:: setup.reference.answers_per_prompt],  # first answer a prompt
        setup.hp,
      )
    )
    ev.update(
      reward_agreement_probe(setup.sampler, setup.tokenizer, rm_dense, setup.prompts, setup.hp)
    )
    samples = assistant_transcripts(samples, cfg.eval.num_samples_in_report)
  else:  # the first answer to each of the first prompts
    samples = samples[:: setup.reference.answers_per_prompt][: cfg.eval.num_samples_in_report]
  result = RoundResult(policy.params, all_pairs, ev, curve, samples)
  _save_round(rdir, root, setup.models, setup.tokenizer, result, setup.ref_params)
  _log.info(
    "round %d: win rate %.3f [%.3f, %.3f], gold %.3f (ref %.3f), KL %.2f, RM acc %.3f",
    r,
    ev["win_rate"],
    ev["win_ci_low"],
    ev["win_ci_high"],
    ev["gold_reward_mean"],
    ev["gold_reward_ref_mean"],
    ev["kl"],
    ev["rm_accuracy"],
  )
  return result


# ----------------------------------------------------------------------------- report


def write_report(
  cfg: Config,
  root: pathlib.Path,
  models: Models,
  results: Sequence[RoundResult],
  timings: Dict[str, float],
  sft_eval: Optional[dict] = None,
) -> None:
  """``report.md`` and the plots, from every round's results (and the supervised stage's
  evaluation, :func:`sft_evaluation`, when there is one)."""
  base_info = _read_json(root / "base" / "DONE") if _done(root / "base") else {}
  summary = {
    "model": dataclasses.asdict(models.lm.cfg),
    "rounds": cfg.rounds,
    "pairs_per_round": cfg.feedback.pairs_per_round,
    "feedback": cfg.feedback.source,
    "policy_reward": cfg.ppo.reward_source,
    "gold": cfg.feedback.gold_scorer,
    "labeller": cfg.feedback.labeller_scorer or cfg.feedback.gold_scorer,
    "independent_judges": ", ".join(cfg.eval.independent_judges) or "none",
    "tie_threshold": cfg.feedback.tie_threshold,
    "ppo_iterations": cfg.ppo.iterations,
    "ppo_batch": cfg.ppo.batch_size,
    "base_heldout_perplexity": base_info.get("heldout_perplexity"),
  }
  extra = []
  if cfg.data.kind == "assistant" and results:
    from rlhf_jax.data import assistant_prompts

    sft_info = _read_json(root / "sft" / "DONE") if sft_eval is not None else None
    extra = report_lib.assistant_section(
      results[-1].eval,
      assistant_prompts.CATEGORIES,
      results[-1].samples,
      sft=sft_eval,
      sft_info=sft_info,
      workdir=str(root),
    )
  report_lib.write_round_report(
    str(root),
    [res.eval for res in results],
    results[-1].samples if results else [],
    summary,
    timings,
    dict(cfg.targets) or None,
    curve=[c for res in results for c in res.curve],
    extra_sections=extra,
  )


# ----------------------------------------------------------------------------- the loop


def _start_up_checks(cfg: Config, root: pathlib.Path):
  """Config, output paths, mesh and batch sizes, scorers and judges: every check that can fail
  before any work. Returns (mesh, gold scorer, independent judges)."""
  check_config(cfg)
  common.check_output_paths(
    "workdir",
    [root / d for d in ["data", "base"] + [f"round_{r}" for r in range(1, cfg.rounds + 1)]],
    [root / "report.md", root / "metrics.jsonl"],
  )
  if cfg.feedback.human_queue_dir:
    common.check_output_paths("config.feedback.human_queue_dir", [cfg.feedback.human_queue_dir])
  mesh = common.build_mesh(cfg.mesh)
  common.check_batch_sizes(
    mesh,
    {
      "config.base.batch_size": cfg.base.batch_size,
      "config.reward.batch_size": cfg.reward.batch_size,
      "config.ppo.batch_size": cfg.ppo.batch_size,
      **(
        {"config.dpo.batch_size": cfg.dpo.batch_size}
        if cfg.ppo.hparams.algorithm in ppo_lib.PREFERENCE_ALGORITHMS
        else {}
      ),
    },
  )
  probes = probe_prompts(cfg.data.kind)

  def probe() -> None:  # process 0: fail before any work on a misnamed or broken scorer
    load_scorers(cfg.feedback, probes)
    ppo_train.load_reward_scorer(cfg.ppo.reward_source, "config.ppo.reward_source")
    load_independent_judges(cfg.eval, probes)

  distributed.lead_only(probe, "start-up: probe scorers and judges")
  # Every process holds them; process 0 alone calls them (_lead_scorer).
  gold = _lead_scorer(load_scorers(cfg.feedback, probe=False), "gold scorer")
  independent = {
    name: _lead_scorer(judge, f"independent judge {name}")
    for name, judge in load_independent_judges(cfg.eval, probe=False).items()
  }
  return mesh, gold, independent


def run(cfg: Config, workdir: str) -> Dict[str, Any]:
  """Run (or resume) the whole pipeline; returns the last round's evaluation."""
  root = pathlib.Path(workdir)
  distributed.lead_only(lambda: root.mkdir(parents=True, exist_ok=True), "workdir")
  t_start = time.perf_counter()
  mesh, gold, independent = _start_up_checks(cfg, root)

  t0 = time.perf_counter()
  tokenizer = prepare_data(cfg.data, root / "data", cfg.seed, cfg.base.path)
  timings = {"data": time.perf_counter() - t0}
  checkpoint.check_preemption("base-model pretraining")
  hp = policy_hparams(cfg.ppo, tokenizer)

  t0 = time.perf_counter()
  base_model, base_params = base_stage(cfg, root, tokenizer, mesh)
  timings["base"] = time.perf_counter() - t0
  models = Models.from_base(base_model.cfg)
  prompts = load_prompts(root / "data", tokenizer, cfg.data.prompt_len)
  sampler = Sampler(models, hp, sampling_batch(cfg.ppo, hp), mesh)
  start_params = None
  if cfg.sft.steps:
    checkpoint.check_preemption("supervised stage")
    t0 = time.perf_counter()
    start_params = base_params
    base_params = demonstration_stage(
      cfg, root, tokenizer, sampler, models, base_params, prompts, hp, mesh
    )
    timings["sft"] = time.perf_counter() - t0
  setup = prepare_rounds(
    cfg,
    root,
    mesh,
    tokenizer,
    hp,
    base_model,
    base_params,
    gold,
    independent,
    start_params=start_params,
    sampler=sampler,
    prompts=prompts,
  )
  sft_eval = sft_evaluation(cfg, root, setup) if cfg.sft.steps else None

  def drop_unfinished_rows() -> None:  # process 0
    n_done = 0
    while n_done < cfg.rounds and _done(root / f"round_{n_done + 1}"):
      n_done += 1
    truncate_metrics(root, n_done)  # rows of rounds that a killed attempt did not finish

  distributed.lead_only(drop_unfinished_rows, "rounds: metrics of unfinished rounds")
  results: List[RoundResult] = []
  policy_params, pairs = base_params, None
  for r in range(1, cfg.rounds + 1):
    results.append(run_round(cfg, setup, root, r, policy_params, pairs))
    policy_params, pairs = results[-1].policy_params, results[-1].pairs

  timings["total"] = time.perf_counter() - t_start
  distributed.lead_only(
    lambda: write_report(cfg, root, setup.models, results, timings, sft_eval), "report"
  )
  return results[-1].eval
