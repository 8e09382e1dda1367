"""Who judges: the judge protocol, gold scorers, simulated annotators and the human queue.

Everything produces `rlhf_jax.data.PreferenceRecord`s. (The transformer-based AI judge lives in
`rlhf_jax.feedback.ai_judge` and is imported from there directly.)
"""

from rlhf_jax.feedback.human import (
  QueueError,
  collect,
  enqueue,
  labelled,
  pending,
  submit_label,
  submit_labels,
  wait_for_labels,
)
from rlhf_jax.feedback.judges import (
  LABEL_A,
  LABEL_B,
  LABEL_TIE,
  Judge,
  JudgeOutput,
  JudgeSpecError,
  Scorer,
  as_judge,
  judge_records,
  load_callable,
  load_judge,
  normalize_judge_output,
)
from rlhf_jax.feedback.scorers import (
  BUILTIN_SCORERS,
  get_scorer,
  kind_and_clean,
  lexicon_offensiveness,
  make_kind_and_clean,
  offensiveness,
  offensiveness_backend,
  response_length,
  vader_sentiment,
)
from rlhf_jax.feedback.simulated import (
  SimulatedLabels,
  annotate_pairs,
  bradley_terry_prob,
  simulate_labels,
  simulated_annotator,
)

__all__ = [
  # human queue
  "QueueError",
  "collect",
  "enqueue",
  "labelled",
  "pending",
  "submit_label",
  "submit_labels",
  "wait_for_labels",
  # judges
  "LABEL_A",
  "LABEL_B",
  "LABEL_TIE",
  "Judge",
  "JudgeOutput",
  "JudgeSpecError",
  "Scorer",
  "as_judge",
  "judge_records",
  "load_callable",
  "load_judge",
  "normalize_judge_output",
  # scorers
  "BUILTIN_SCORERS",
  "get_scorer",
  "kind_and_clean",
  "lexicon_offensiveness",
  "make_kind_and_clean",
  "offensiveness",
  "offensiveness_backend",
  "response_length",
  "vader_sentiment",
  # simulated annotators
  "SimulatedLabels",
  "annotate_pairs",
  "bradley_terry_prob",
  "simulate_labels",
  "simulated_annotator",
]
