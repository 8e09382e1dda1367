r"""PPO alone, on randomly initialised GPT-2 models and random prompts (the benchmark shape).

The anchor workload of ../shared/anchors: 64 prompts x 32 tokens, 32 response tokens,
4 epochs x 4 minibatches of 16, separate value model, float32. With random weights the
numbers to look at are speed (samples/s in metrics.jsonl) and that every metric is finite.
To train a real policy, point policy.path / reward.path at checkpoints and prompts at a
JSONL file of {"prompt": ...} records.

  python -m rlhf_jax.main --config configs/ppo.py:small --workdir runs/ppo_small
  python -m rlhf_jax.main --config configs/ppo.py:medium --workdir runs/ppo_medium
  python -m rlhf_jax.main --config configs/ppo.py:tiny --workdir runs/ppo_tiny   # seconds
"""

import ml_collections as mlc

_PRESETS = {"tiny": "tiny", "small": "gpt2-small", "medium": "gpt2-medium"}
VARIANTS = tuple(_PRESETS)  # configs/ppo.py:<size>


def get_config(arg=None):
  size = arg or "small"
  if size not in _PRESETS:
    raise ValueError(f"configs/ppo.py: unknown size {size!r}; use one of {sorted(_PRESETS)}")
  c = mlc.ConfigDict()
  c.task = "ppo"
  c.distributed = dict(auto=False)
  # scan_unroll=0: every layer unrolled. On CPU the PPO update phase runs ~15% faster than
  # under a layer scan; compile time grows with depth, so deep models should scan (1).
  model = dict(
    path="", preset=_PRESETS[size], vocab_size=8192, dtype="float32", remat=False, scan_unroll=0
  )
  c.policy = dict(model)
  c.reward = dict(model)
  c.value_init = "reward"
  c.ppo = dict(
    response_len=32,
    num_minibatches=4,
    epochs=4,
    temperature=1.0,
    top_k=0,
    top_p=1.0,
    eos_id=0,
    pad_id=1,
    min_response_len=0,
    missing_stop="none",
    missing_stop_score=-1.0,
    missing_stop_penalty=1.0,
    kl_estimator="k1",
    adaptive_kl=False,
    kl_target=6.0,
    kl_horizon=10000.0,
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
  c.optimizer = dict(
    name="adam",
    learning_rate=1e-5,
    anneal=True,
    warmup_steps=0,
    b1=0.9,
    b2=0.999,
    eps=1e-5,
    weight_decay=0.0,
    max_grad_norm=0.0,
  )
  c.mesh = dict(data=1, fsdp=-1, tensor=1)
  c.prompts = dict(source="random", path="", field="prompt", prompt_len=32, num_random=1024)
  c.batch_size = 64
  c.iterations = 10
  c.init_kl_coef = 0.05
  c.normalize_reward = True
  c.norm_samples = 128
  c.seed = 0
  c.log_every = 1
  c.checkpoint_every = 10
  c.keep_checkpoints = 2
  if size == "tiny":
    c.ppo.response_len = 8
    c.prompts.prompt_len = 8
    c.batch_size = 16
    c.iterations = 3
    c.norm_samples = 16
  return c
