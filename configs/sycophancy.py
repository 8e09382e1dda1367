r"""The seed's pitfall measured: sycophantic annotators, PPO, and the KL coefficient.

The assistant task (configs/assistant.py) on its premise prompts alone, with simulated
annotators who, for a fraction `bias` of the pairs, prefer the response that agrees with the
user's claim (premise pairs where exactly one response agrees; feedback.bias,
rlhf_jax.feedback.assistant.agreement_preference) instead of the gold checks. Each arm is one
(bias, β) setting with a fixed KL coefficient β (no adaptive controller), run for every seed
from one data directory and one base model (rlhf_jax/train/sycophancy.py, on the arms
machinery of rlhf_jax/train/compare.py). The study writes README.md (per bias x β: the
reward model's preference for agreeing with false claims, false-premise agreement of the
starting model and of the final policy and its change, per claim pooled over seeds; label
agreement with gold, KL and gold win rate over seeds; and the bias effect, biased minus
unbiased arm paired by seed and claim), sycophancy.png (agreement against bias, one line
per β) and rows.json. What it should show: biased labels raise the
false-premise agreement rate under PPO, unbiased labels lower it, and a larger β bounds the
drift.

  python -m rlhf_jax.main --config configs/sycophancy.py --workdir runs/sycophancy

Smoke variant (the assistant smoke's random 2-layer model, 2 biases x 2 β x 1 seed: checks
that the study runs and writes its table and plot; its numbers mean nothing):

  python -m rlhf_jax.main --config configs/sycophancy.py:smoke --workdir runs/sycophancy_smoke

One arm (a pipeline config) is `configs/sycophancy.py:arm,bias=0.5,kl=0.1` (or
`arm_smoke,...`). How an arm differs from configs/assistant.py, and why: premise prompts
only (data.categories; the bias acts on no other category, and the 80 held-out prompts then
hold ~40 false claims instead of 8); no supervised stage (the starting model's answers to
one prompt already differ in whether they agree, which is all the biased and unbiased labels
need); 576 comparisons (6 pairs among 4 answers to each of 96 prompts), 32-token answers and
10 PPO iterations, so that 2 biases x 2 β x 2 seeds fit one working session on 2 CPU cores
(arms of one seed with the same bias share their labels and reward model).

Recorded (docs/results/sycophancy/, findings.md there; 2-core AMD EPYC family 25 model 17,
2026-12-05): 2 biases x 2 β x 2 seeds, zero reward-model head,

  python -m rlhf_jax.main --config configs/sycophancy.py --workdir runs/syco_zero \
      --config.kl_coefs="(0.05,)"
  python -m rlhf_jax.main --config configs/sycophancy.py --workdir runs/syco_zero

(the second grows the first's study by the β = 0.2 arms, which take their seed's labels and
reward models from the β = 0.05 arms), with each run's round_1/{pairs.npz, labels.json,
preferences.jsonl} copied from the 2026-12-04 study (same seeds; a fresh workdir samples
and labels them itself, ~3 minutes a seed), 4 answers to each of 42 held-out false claims
a seed; 17-26 minutes an arm. The reward models follow their labels: biased ones prefer
"Yes, that's right" on 83 of 84 false claims, unbiased ones on 38 of 84 (and on 65 of 76
true claims). At β = 0.05 the biased arm ends with false-premise agreement 0.741 [0.674,
0.808], the unbiased one 0.622 [0.555, 0.689], from 0.446: bias effect +0.119 [+0.045,
+0.193] paired by seed and claim — biased annotators breed sycophancy, shown. At β = 0.2
the biased arm ends at 0.619: β's effect on it is -0.122 [-0.190, -0.054] (both seeds
negative) and the bias effect +0.006 [-0.065, +0.077] — the larger KL coefficient bounds
the drift, shown (KL 2.3-2.6 nats against 4.1-4.6). NOT shown: that unbiased labels lower
agreement — they raise it by about 0.17 at either β, because the starting model takes no
stance in 70% of its answers and PPO turns them into short statements of the user's own
claim, which a 135M model without the facts cannot correct (findings.md).

With the premise check fixed (saying nothing about a false claim now scores 0.25, no longer
0 like agreeing; docs/results/sycophancy/new_check/, findings.md) the unbiased arm
(β = 0.05, 2 seeds) again raised agreement, 0.446 -> 0.616; a seed-0 control whose labels
carry no direction (feedback.flip_prob = 0.5) kept it at 0.452, so the unbiased labels do
push towards agreeing (+0.131 [+0.021, +0.241] against the control, one seed): their
reward models cannot tell false claims from true ones.

The 2026-12-04 study (docs/results/sycophancy/random_head/; default random head, std
1/sqrt(d + 1), all 8 arms): its reward models ranked agreement by the seed's random
projection, not by the labels, and the bias effect was +0.04 [-0.03, +0.12] at β = 0.05
and +0.02 [-0.05, +0.08] at β = 0.2.
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
  # Premise prompts only: the bias acts on no other category, and all 80 held-out prompts
  # (about 40 false claims, not 8) then measure the agreement rate.
  c.data.categories = ("premise",)
  # No supervised stage: the starting model already agrees with some false claims and
  # disputes others (its 4 answers to a prompt often differ), which is what biased and
  # unbiased labels pull apart; the stage would cost 10 minutes a seed.
  c.sft.steps = 0
  # A zero scalar head: with the default random one (std 1/sqrt(d + 1)) the 12 reward-model
  # steps hardly moved it, and each seed's reward model preferred agreeing with the user on
  # all false claims or on a quarter of them whatever its labels (2026-12-04 study); from a
  # zero head, seed 1's unbiased labels gave 0.38 on false claims against 0.74 on true ones
  c.reward.head_init_std = 0.0
  if name == "arm":  # sized so that 2 biases x 2 β x 2 seeds fit a working session
    c.feedback.pairs_per_round = 576  # all 6 pairs among 4 answers to each of 96 prompts
    c.ppo.hparams.response_len = 32  # the verdict and the corrected claim
    c.ppo.iterations = 10
    c.eval.rm_pairs_per_prompt = 1  # as in the recorded study (docs/results/sycophancy/)
    # 4 answers to each held-out claim: one answer a prompt made the starting model read
    # 0.62 and 0.48 on the same 42 false claims (two sampling seeds)
    c.eval.answers_per_prompt = 4
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
  c.biases = (0.0, 1.0)  # feedback.bias of the arms
  c.kl_coefs = (0.05, 0.5) if smoke else (0.05, 0.2)  # fixed KL coefficients β
  c.seeds = (0,) if smoke else (0, 1)
  c.base_path = ""  # "": the arms' base (SmolLM2; smoke: a random model built once)
  c.out_dir = "" if smoke else "docs/results/sycophancy"  # "": <workdir>/results
  c.title = "Sycophantic labels under PPO" + (" (smoke)" if smoke else "")
  return c
