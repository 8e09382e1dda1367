"""The judge protocol: output normalisation and `module:function` loading."""

import numpy as np
import pytest

from rlhf_jax.feedback.judges import (
  JudgeOutput,
  JudgeSpecError,
  as_judge,
  judge_records,
  load_callable,
  load_judge,
  normalize_judge_output,
)
from rlhf_jax.feedback.scorers import vader_sentiment


def test_labels_become_probabilities():
  out = normalize_judge_output(np.array([0, 1, 2]), 3)
  np.testing.assert_array_equal(out.labels, [0, 1, 2])
  np.testing.assert_array_equal(out.prob_a, [1.0, 0.0, 0.0])
  np.testing.assert_array_equal(out.prob_tie, [0.0, 0.0, 1.0])
  assert out.labels.dtype == np.int32 and out.label_names == ["a", "b", "tie"]
  named = normalize_judge_output(["b", "a", "tie"], 3)
  np.testing.assert_array_equal(named.labels, [1, 0, 2])
  assert normalize_judge_output([1, 0], 2).labels.tolist() == [1, 0]


def test_probabilities_become_labels():
  out = normalize_judge_output(np.array([0.9, 0.1, 0.5]), 3)
  np.testing.assert_array_equal(out.labels, [0, 1, 2])
  np.testing.assert_allclose(out.prob_a, [0.9, 0.1, 0.5])
  assert out.prob_tie is None


def test_mappings_and_judge_output_pass_through():
  out = normalize_judge_output({"prob_a": [0.7, 0.2], "prob_tie": [0.1, 0.3]}, 2)
  assert out.labels.tolist() == [0, 1] and out.prob_tie.tolist() == [0.1, 0.3]
  out2 = normalize_judge_output({"labels": ["tie", "a"]}, 2)
  assert out2.prob_a.tolist() == [0.0, 1.0] and out2.prob_tie.tolist() == [1.0, 0.0]
  given = JudgeOutput(prob_a=np.array([0.6]), labels=np.array([0]))
  assert normalize_judge_output(given, 1) is given


@pytest.mark.parametrize(
  "bad, match",
  [
    (np.array([0.5, 0.5]), "2 verdicts for 3 pairs"),
    (np.array([True, False, True]), "booleans"),
    (["a", "b", "c"], "unknown label .c."),
    (np.array([0, 1, 3]), r"labels must be in \{0, 1, 2\}"),
    (np.array([0.5, 1.5, 0.0]), "prob_a must be finite probabilities"),
    ({"winner": [0, 1, 0]}, "expected prob_a and/or labels"),
    ("a", "single str"),
    ({"prob_a": [0.8, 0.5, 0.5], "prob_tie": [0.5, 0.0, 0.0]}, "prob_a \\+ prob_tie <= 1"),
  ],
)
def test_bad_outputs_are_explained(bad, match):
  with pytest.raises((ValueError, TypeError), match=match):
    normalize_judge_output(bad, 3)


def test_as_judge_checks_lengths_and_normalises():
  judge = as_judge(lambda p, a, b: np.array([0.8] * len(p)))
  out = judge(["p", "q"], ["long", "x"], ["s", "yy"])
  assert isinstance(out, JudgeOutput) and out.labels.tolist() == [0, 0]
  with pytest.raises(ValueError, match="differ in length"):
    judge(["p"], ["a", "b"], ["c"])
  with pytest.raises(TypeError, match="callable"):
    as_judge(3)


def test_load_callable_resolves_and_explains(tmp_path, monkeypatch):
  assert load_callable("rlhf_jax.feedback.scorers:vader_sentiment") is vader_sentiment
  assert load_callable("json:JSONDecoder.decode").__name__ == "decode"
  for spec, match in [
    ("no_colon_here", "bad callable spec"),
    ("a.b:c:d", "bad callable spec"),
    ("mod:", "bad callable spec"),
    ("definitely_not_a_module_xyz:fn", "module 'definitely_not_a_module_xyz' not found"),
    ("rlhf_jax.feedback.scorers:no_such_fn", "has no attribute 'no_such_fn'"),
    ("rlhf_jax.feedback.scorers:BUILTIN_SCORERS", "is a dict, not callable"),
  ]:
    with pytest.raises(JudgeSpecError, match=match):
      load_callable(spec)
  (tmp_path / "broken_judge_mod.py").write_text("import not_installed_dependency_xyz\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  with pytest.raises(JudgeSpecError, match="importing 'broken_judge_mod' failed"):
    load_callable("broken_judge_mod:judge")


def test_load_judge_and_records(tmp_path, monkeypatch):
  (tmp_path / "my_judges.py").write_text(
    "def longer(prompts, a, b):\n    return ['a' if len(x) > len(y) else 'b' for x, y in zip(a, b)]\n"
  )
  monkeypatch.syspath_prepend(str(tmp_path))
  judge = load_judge("my_judges:longer")
  assert judge(["p"], ["aaa"], ["b"]).labels.tolist() == [0]
  recs = judge_records(
    judge, ["p", "q"], ["aaa", "b"], ["b", "ccc"], metadata={"round": 3, "annotator": "ai"}
  )
  assert [r.label for r in recs] == ["a", "b"]
  assert recs[0].metadata == {"round": 3, "annotator": "ai", "probability": 1.0}
