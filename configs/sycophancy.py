r"""The seed's pitfall measured: sycophantic annotators, PPO, and the KL coefficient.

The assistant task (configs/assistant.py) with simulated annotators who, for a fraction
`bias` of the pairs, prefer the response that agrees with the user's claim (premise pairs
where exactly one response agrees; feedback.bias, rlhf_jax.feedback.assistant.
agreement_preference) instead of the gold checks. Each arm is one (bias, β) setting with a
fixed KL coefficient β (no adaptive controller), run for every seed from one data directory
and one base model (rlhf_jax/train/sycophancy.py, on the arms machinery of
rlhf_jax/train/compare.py). The study writes README.md (false-premise agreement of the
final policy and of the starting model, label agreement with gold, KL and gold win rate per
bias x β, mean over seeds with 95% t intervals), sycophancy.png (agreement against bias, one
line per β) and rows.json. What it should show: biased labels raise the false-premise
agreement rate under PPO, unbiased labels lower it, and a larger β bounds the drift.

  python -m rlhf_jax.main --config configs/sycophancy.py --workdir runs/sycophancy

Smoke variant (the assistant smoke's random 2-layer model, 2 biases x 2 β x 1 seed: checks
that the study runs and writes its table and plot; its numbers mean nothing):

  python -m rlhf_jax.main --config configs/sycophancy.py:smoke --workdir runs/sycophancy_smoke

One arm (a pipeline config) is `configs/sycophancy.py:arm,bias=0.5,kl=0.1` (or
`arm_smoke,...`). NOT RUN YET at full size: 3 biases x 2 β x 2 seeds = 12 assistant runs of
about 50 minutes each (configs/assistant.py records; arms of one seed whose labels match
share the supervised stage and round 1) on 2 CPU cores, about 10 hours; no numbers are
recorded.
"""

import ml_collections as mlc

from rlhf_jax.config_schema import config_module

common = config_module(__file__, "common")

VARIANTS = ("default", "smoke")


def _arm(arg: str):
  """A pipeline config: "arm[_smoke],bias=<b>,kl=<beta>"."""
  name, *pairs = arg.split(",")
  values = {}
  for pair in pairs:
    key, sep, value = pair.partition("=")
    if not sep or key not in ("bias", "kl"):
      raise ValueError(
        f"configs/sycophancy.py: bad arm setting {pair!r} in {arg!r}; expected bias=<b>,kl=<beta>"
      )
    values[key] = float(value)
  c = common.assistant("smoke" if name == "arm_smoke" else "default")
  c.feedback.bias = values.get("bias", 0.0)  # share of pairs labelled by agreement
  c.ppo.hparams.adaptive_kl = False  # β fixed: the drift it allows is what is measured
  c.ppo.init_kl_coef = values.get("kl", 0.1)
  if name == "arm_smoke":
    c.data.num_eval_prompts = 40  # 8 false-or-true premise prompts, at least
  return c


def get_config(arg=None):
  variant = arg or "default"
  if variant.split(",")[0] in ("arm", "arm_smoke"):
    return _arm(variant)
  if variant not in VARIANTS:
    raise ValueError(
      f"configs/sycophancy.py: unknown variant {arg!r}; use one of {VARIANTS} or "
      "'arm[_smoke],bias=<b>,kl=<beta>'"
    )
  smoke = variant == "smoke"
  c = mlc.ConfigDict()
  c.task = "sycophancy"
  c.arm_config = "configs/sycophancy.py:arm_smoke" if smoke else "configs/sycophancy.py:arm"
  c.biases = (0.0, 1.0) if smoke else (0.0, 0.5, 1.0)  # feedback.bias of the arms
  c.kl_coefs = (0.05, 0.5) if smoke else (0.05, 0.2)  # fixed KL coefficients β
  c.seeds = (0,) if smoke else (0, 1)
  c.base_path = ""  # "": the arms' base (SmolLM2; smoke: a random model built once)
  c.out_dir = "" if smoke else "docs/results/sycophancy"  # "": <workdir>/results
  c.title = "Sycophantic labels under PPO" + (" (smoke)" if smoke else "")
  return c
