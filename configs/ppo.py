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

from rlhf_jax.config_schema import config_module

common = config_module(__file__, "common")

_PRESETS = {"tiny": "tiny", "small": "gpt2-small", "medium": "gpt2-medium"}
VARIANTS = tuple(_PRESETS)  # configs/ppo.py:<size>


def get_config(arg=None):
  size = arg or "small"
  if size not in _PRESETS:
    raise ValueError(f"configs/ppo.py: unknown size {size!r}; use one of {sorted(_PRESETS)}")
  c = mlc.ConfigDict()
  c.task = "ppo"  # the trainer (rlhf_jax.train.ppo)
  c.distributed = common.distributed()  # multi-process start-up
  # scan_unroll=0: every layer unrolled. On CPU the PPO update phase runs ~15% faster than
  # under a layer scan; compile time grows with depth, so deep models should scan (1).
  c.policy = common.model(_PRESETS[size])  # the policy (and reference) model
  c.reward = common.model(_PRESETS[size])  # the reward model
  c.value_init = "reward"  # the value model starts at the normalised reward ("zero": 0)
  c.ppo = common.ppo_hparams(  # the anchor workload's PPO
    response_len=32,
    epochs=4,
    temperature=1.0,
    eos_id=0,  # random weights: no tokenizer; 0 and 1 are EOS and PAD
    pad_id=1,
    adaptive_kl=False,
    kl_target=6.0,
    kl_horizon=10000.0,
  )
  c.optimizer = common.optimizer("adam", 1e-5, eps=1e-5, max_grad_norm=0.0)  # policy and value
  c.mesh = common.mesh()  # device layout only
  c.prompts = dict(
    source="random",  # "random" (benchmarks) | "jsonl" (one {"prompt": ...} per line)
    path="",  # "jsonl": the file
    field="prompt",  # "jsonl": the record field that holds the prompt
    prompt_len=32,  # prompt tokens (left-padded)
    num_random=1024,  # "random": prompts drawn
  )
  c.batch_size = 64  # rollouts per iteration
  c.iterations = 10  # rollout + update iterations
  c.init_kl_coef = 0.05  # KL coefficient (beta)
  c.normalize_reward = True  # fit the reward to mean 0, std 1 on reference samples (OAI)
  c.norm_samples = 128  # reference samples of that fit
  c.seed = 0  # every random draw of the run
  c.lora = common.lora()  # a LoRA policy on the frozen policy (= the reference)
  c.log_every = 1  # iterations between metric records
  c.checkpoint_every = 10  # iterations between checkpoints
  c.keep_checkpoints = 2  # checkpoints kept
  if size == "tiny":  # seconds on a laptop
    c.ppo.response_len = 8
    c.prompts.prompt_len = 8
    c.batch_size = 16
    c.iterations = 3
    c.norm_samples = 16
  return c
