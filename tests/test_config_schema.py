"""ConfigDict -> frozen dataclass validation: paths, suggestions, types, defaults."""

import dataclasses
import json
from typing import Literal, Optional, Tuple

import ml_collections
import numpy as np
import pytest

from rlhf_jax.config_schema import ConfigError, from_config, to_dict


@dataclasses.dataclass(frozen=True)
class PPO:
  kl_target: Optional[float] = 6.0
  clip: float = 0.2
  epochs: int = 4
  whiten: bool = True
  adam: Literal["torch", "tf"] = "torch"


@dataclasses.dataclass(frozen=True)
class Model:
  name: str  # required
  dims: tuple[int, ...] = (8, 16)
  pair: Tuple[str, float] = ("relu", 0.5)


@dataclasses.dataclass(frozen=True)
class Config:
  model: Model
  ppo: PPO = PPO()
  seed: int = 0
  tags: tuple[str, ...] = ()
  scorer: Optional[Model] = None
  lr: float | None = None
  weights: dict[str, float] = dataclasses.field(default_factory=dict)


def _cfg(**overrides):
  d = {
    "model": {"name": "gpt2", "dims": (4, 4)},
    "ppo": {"kl_target": 3, "epochs": 2.0, "adam": "tf"},
    "seed": 1,
    "tags": ["a", "b"],
  }
  return ml_collections.ConfigDict({**d, **overrides})


def test_builds_nested_frozen_dataclass_with_conversions():
  cfg = from_config(Config, _cfg())
  assert cfg == Config(
    model=Model(name="gpt2", dims=(4, 4)),
    ppo=PPO(kl_target=3.0, epochs=2, adam="tf"),
    seed=1,
    tags=("a", "b"),
  )
  assert isinstance(cfg.ppo.kl_target, float) and isinstance(cfg.ppo.epochs, int)
  with pytest.raises(dataclasses.FrozenInstanceError):
    cfg.seed = 2  # type: ignore[misc]
  # Plain dicts, numpy scalars, None for Optional, nested Optional dataclass, X | None.
  cfg = from_config(
    Config,
    {
      "model": {"name": "m"},
      "seed": np.int64(3),
      "ppo": {"kl_target": None, "clip": np.float32(0.5)},
      "scorer": {"name": "gold"},
      "lr": 1,
    },
  )
  assert cfg.seed == 3 and type(cfg.seed) is int
  assert cfg.ppo.kl_target is None and cfg.ppo.clip == 0.5
  assert cfg.scorer == Model(name="gold") and cfg.lr == 1.0


def test_field_reference_resolved():
  c = _cfg()
  c.ppo.clip = ml_collections.FieldReference(0.3)
  assert from_config(Config, c).ppo.clip == 0.3


def test_unknown_field_names_dotted_path_and_suggests():
  c = _cfg()
  c.ppo.kl_targt = 1.0
  with pytest.raises(
    ConfigError,
    match=r"config\.ppo\.kl_targt: unknown field; did you mean "
    r"config\.ppo\.kl_target\?",
  ):
    from_config(Config, c)
  with pytest.raises(ConfigError, match=r"^cfg\.sede: unknown field; did you mean cfg\.seed\?"):
    from_config(Config, {"model": {"name": "x"}, "sede": 1}, path="cfg")


def test_unknown_field_suggests_the_nearest_path_in_another_section():
  """The README's own example: ``ppo.kl_targt`` in the pipeline config lives at
  ``ppo.hparams.kl_target``; the suggestion is the full valid path, not a sibling."""
  from rlhf_jax.train import pipeline

  with pytest.raises(
    ConfigError,
    match=r"^config\.ppo\.kl_targt: unknown field; did you mean "
    r"config\.ppo\.hparams\.kl_target\?",
  ):
    from_config(pipeline.Config, {"ppo": {"kl_targt": 3.0}})
  with pytest.raises(
    ConfigError,
    match=r"^config\.kl_target: unknown field; did you mean "
    r"config\.ppo\.hparams\.kl_target\?",
  ):
    from_config(pipeline.Config, {"kl_target": 3.0})


def test_dataclass_own_checks_name_the_field_path():
  """A nested dataclass's ``__post_init__`` refusal is reported under its config path."""
  from rlhf_jax.train import pipeline

  with pytest.raises(
    ConfigError,
    match=r"^config\.ppo\.hparams: PPOHparams\.epochs must be "
    r">= 1, got 0",
  ):
    from_config(pipeline.Config, {"ppo": {"hparams": {"epochs": 0}}})


def test_check_bounds_names_each_offending_field():
  from rlhf_jax.config_schema import check_bounds
  from rlhf_jax.train import overoptimization, pipeline

  cfg = from_config(
    pipeline.Config,
    {
      "ppo": {"batch_size": 0, "iterations": -5},
      "reward": {"batch_size": -1},
      "feedback": {"flip_prob": 1.5},
    },
  )
  errors = check_bounds(
    cfg,
    {
      "ppo.batch_size": ">= 1",
      "ppo.iterations": ">= 1",
      "reward.batch_size": ">= 1",
      "feedback.flip_prob": "in [0, 1]",
      "feedback.temperature": "> 0",
      "data.prompt_words[*]": ">= 1",
    },
  )
  assert errors == [
    "config.ppo.batch_size=0: expected >= 1",
    "config.ppo.iterations=-5: expected >= 1",
    "config.reward.batch_size=-1: expected >= 1",
    "config.feedback.flip_prob=1.5: expected in [0, 1]",
  ]
  cfg = from_config(overoptimization.Config, {"label_counts": (32, 0)})
  assert check_bounds(cfg, {"label_counts[*]": ">= 1"}) == [
    "config.label_counts[1]=0: expected >= 1"
  ]


@pytest.mark.parametrize(
  "key,value,message",
  [
    ("seed", "3", r"config\.seed: expected int, got str '3'"),
    ("seed", 2.5, r"config\.seed: expected int, got non-integral float 2\.5"),
    ("seed", True, r"config\.seed: expected int, got bool True"),
    ("tags", ("a", 1), r"config\.tags\[1\]: expected str, got int 1"),
    ("tags", "ab", r"config\.tags: expected tuple\[str, \.\.\.\], got str 'ab'"),
    ("lr", "1e-3", r"config\.lr: expected (float \| None|Optional\[float\]), got str '1e-3'"),
    ("model", 3, r"config\.model: expected Model, got int 3"),
  ],
)
def test_type_errors_name_path_expected_and_got(key, value, message):
  with pytest.raises(ConfigError, match=message):
    from_config(Config, _cfg(**{key: value}))


def test_nested_type_literal_tuple_and_bool_errors():
  with pytest.raises(ConfigError, match=r"config\.ppo\.clip: expected float, got str 'x'"):
    from_config(Config, {"model": {"name": "m"}, "ppo": {"clip": "x"}})
  with pytest.raises(
    ConfigError,
    match=r"config\.ppo\.adam: expected one of 'torch', 'tf', "
    r"got str 'torh'; did you mean 'torch'\?",
  ):
    from_config(Config, {"model": {"name": "m"}, "ppo": {"adam": "torh"}})
  with pytest.raises(ConfigError, match=r"config\.ppo\.whiten: expected bool, got int 1"):
    from_config(Config, {"model": {"name": "m"}, "ppo": {"whiten": 1}})
  with pytest.raises(
    ConfigError,
    match=r"config\.model\.pair: expected Tuple\[str, float\] "
    r"with 2 elements, got 3",
  ):
    from_config(Config, {"model": {"name": "m", "pair": ("a", 1, 2)}})
  with pytest.raises(ConfigError, match=r"config\.model\.pair\[1\]: expected float, got str"):
    from_config(Config, {"model": {"name": "m", "pair": ("a", "b")}})
  with pytest.raises(ConfigError, match=r"config\.weights\.gold: expected float, got str"):
    from_config(Config, {"model": {"name": "m"}, "weights": {"gold": "1"}})
  assert from_config(Config, {"model": {"name": "m"}, "weights": {"gold": 1}}).weights == {
    "gold": 1.0
  }
  with pytest.raises(
    ConfigError,
    match=r"config\.scorer\.nme: unknown field; did you mean "
    r"config\.scorer\.name\?",
  ):
    from_config(Config, {"model": {"name": "m"}, "scorer": {"nme": "g"}})


def test_missing_required_and_all_errors_reported():
  with pytest.raises(ConfigError) as info:
    from_config(Config, {"model": {}, "seed": "x", "bogus": 1})
  lines = str(info.value).splitlines()
  assert any(l.startswith("config.model.name: missing required field of type str") for l in lines)
  assert any(l.startswith("config.seed: expected int") for l in lines)
  assert any(l.startswith("config.bogus: unknown field") for l in lines)
  with pytest.raises(ConfigError, match="config.model: missing required field"):
    from_config(Config, {})


def test_to_dict_roundtrip_through_json():
  cfg = from_config(Config, _cfg())
  d = to_dict(cfg)
  assert d["ppo"] == {"kl_target": 3.0, "clip": 0.2, "epochs": 2, "whiten": True, "adam": "tf"}
  assert d["model"]["dims"] == [4, 4]
  assert from_config(Config, json.loads(json.dumps(d))) == cfg
  with pytest.raises(TypeError):
    to_dict({"a": 1})
