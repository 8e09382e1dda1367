"""ConfigDict -> frozen dataclasses, at the boundary (library code never sees ml_collections).

Trainers declare their hyperparameters as (frozen) dataclasses with typed fields and defaults;
the entry point validates a ConfigDict (or plain dict) against them::

    @dataclasses.dataclass(frozen=True)
    class PPOConfig:
      kl_target: Optional[float] = 6.0
      adam: Literal["torch", "tf"] = "torch"

    @dataclasses.dataclass(frozen=True)
    class Config:
      ppo: PPOConfig = PPOConfig()
      seeds: tuple[int, ...] = (0,)

    cfg = from_config(Config, config)     # errors name the dotted path: config.ppo.kl_targt

Supported field types: ``int``, ``float``, ``bool``, ``str``, ``Optional[X]`` / ``X | None``,
other ``Union`` types (first that fits), ``tuple[X, ...]``, ``tuple[X, Y]``, ``Literal[...]``,
nested dataclasses, ``dict[K, V]`` (e.g. per-name weights) and ``Any`` (passed through).
Conversion rules: ints are accepted for floats; an integral float (``3.0``) is accepted for an
int, ``3.5`` is not; ``bool`` is never accepted as a number nor a number as ``bool``; lists are
accepted for tuples. This module does not import ``ml_collections``: anything with
``to_dict()`` (a ConfigDict) or a ``Mapping`` works.
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers
import types
import typing
from typing import Any, Literal, Mapping, Union

__all__ = ["ConfigError", "from_config", "to_dict"]


class ConfigError(ValueError):
  """Invalid configuration; the message names every offending dotted path."""


class _Invalid(Exception):
  def __init__(self, path: str, message: str):
    super().__init__(f"{path}: {message}")
    self.path = path


def _type_name(tp: Any) -> str:
  if tp is type(None):
    return "None"
  if isinstance(tp, type):
    return tp.__name__
  return str(tp).replace("typing.", "")


def _describe(value: Any) -> str:
  text = repr(value)
  if len(text) > 60:
    text = text[:57] + "..."
  return f"{type(value).__name__} {text}"


def _fail(path: str, tp: Any, value: Any):
  raise _Invalid(path, f"expected {_type_name(tp)}, got {_describe(value)}")


def _as_mapping(value: Any) -> Mapping | None:
  if hasattr(value, "to_dict") and callable(value.to_dict):
    value = value.to_dict()
  return value if isinstance(value, Mapping) else None


def _convert(tp: Any, value: Any, path: str, errors: list[str]) -> Any:
  """Converts ``value`` to ``tp``; raises ``_Invalid`` (type errors of this value)."""
  if tp is Any:
    return value
  origin = typing.get_origin(tp)
  args = typing.get_args(tp)

  if dataclasses.is_dataclass(tp) and isinstance(tp, type):
    if isinstance(value, tp):
      return value
    mapping = _as_mapping(value)
    if mapping is None:
      _fail(path, tp, value)
    return _build(tp, mapping, path, errors)

  if origin is Union or (hasattr(types, "UnionType") and isinstance(tp, types.UnionType)):
    if value is None:
      if type(None) in args:
        return None
      _fail(path, tp, value)
    options = [a for a in args if a is not type(None)]
    for option in options:
      try:
        sub_errors: list[str] = []
        out = _convert(option, value, path, sub_errors)
      except _Invalid:
        continue
      if not sub_errors:
        return out
    if len(options) == 1 and (dataclasses.is_dataclass(options[0])
                              or typing.get_origin(options[0]) in (tuple, typing.Tuple)):
      # Optional[container]: report the inner message (nested unknown field, element type).
      return _convert(options[0], value, path, errors)
    _fail(path, tp, value)

  if origin is Literal:
    if any(type(a) is type(value) and a == value for a in args):
      return value
    choices = ", ".join(repr(a) for a in args)
    hint = ""
    if isinstance(value, str):
      close = difflib.get_close_matches(value, [a for a in args if isinstance(a, str)], n=1)
      hint = f"; did you mean {close[0]!r}?" if close else ""
    raise _Invalid(path, f"expected one of {choices}, got {_describe(value)}{hint}")

  if origin in (tuple, typing.Tuple) or tp is tuple:
    if not isinstance(value, (tuple, list)):
      _fail(path, tp, value)
    if not args:
      return tuple(value)
    if len(args) == 2 and args[1] is Ellipsis:
      return tuple(_convert(args[0], v, f"{path}[{i}]", errors) for i, v in enumerate(value))
    if len(args) != len(value):
      raise _Invalid(path, f"expected {_type_name(tp)} with {len(args)} elements, got "
                     f"{len(value)}: {_describe(value)}")
    return tuple(_convert(a, v, f"{path}[{i}]", errors) for i, (a, v) in
                 enumerate(zip(args, value)))

  if origin in (dict, typing.Dict) or tp is dict:
    mapping = _as_mapping(value)
    if mapping is None:
      _fail(path, tp, value)
    if not args:
      return dict(mapping)
    return {_convert(args[0], k, f"{path}[{k!r}]", errors):
            _convert(args[1], v, f"{path}.{k}", errors) for k, v in mapping.items()}

  if origin is not None:
    raise _Invalid(path, f"unsupported field type {_type_name(tp)}")

  if tp is bool:
    if isinstance(value, bool) or type(value).__name__ == "bool_":
      return bool(value)
    _fail(path, tp, value)
  if tp is int:
    if isinstance(value, bool) or type(value).__name__ == "bool_":
      _fail(path, tp, value)
    if isinstance(value, numbers.Integral):
      return int(value)
    if isinstance(value, numbers.Real) and float(value).is_integer():
      return int(value)
    if isinstance(value, numbers.Real):
      raise _Invalid(path, f"expected int, got non-integral {_describe(value)}")
    _fail(path, tp, value)
  if tp is float:
    if isinstance(value, bool) or type(value).__name__ == "bool_":
      _fail(path, tp, value)
    if isinstance(value, numbers.Real):
      return float(value)
    _fail(path, tp, value)
  if tp is str:
    if isinstance(value, str):
      return value
    _fail(path, tp, value)
  if isinstance(tp, type):
    if isinstance(value, tp):
      return value
    _fail(path, tp, value)
  raise _Invalid(path, f"unsupported field type {_type_name(tp)}")


def _build(cls: type, mapping: Mapping, path: str, errors: list[str]) -> Any:
  hints = typing.get_type_hints(cls)
  fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
  kwargs = {}
  for key in mapping:
    if key not in fields:
      close = difflib.get_close_matches(str(key), list(fields), n=1)
      hint = f"; did you mean {close[0]!r}?" if close else ""
      errors.append(f"{path}.{key}: unknown field{hint} (fields of {cls.__name__}: "
                    f"{', '.join(fields)})")
  for name, field in fields.items():
    sub = f"{path}.{name}"
    if name not in mapping:
      if (field.default is dataclasses.MISSING
          and field.default_factory is dataclasses.MISSING):  # type: ignore[misc]
        errors.append(f"{sub}: missing required field of type {_type_name(hints[name])}")
      continue
    try:
      kwargs[name] = _convert(hints[name], mapping[name], sub, errors)
    except _Invalid as e:
      errors.append(str(e))
  if errors:
    return None
  return cls(**kwargs)


def from_config(cls: type, config: Any, path: str = "config") -> Any:
  """Builds the dataclass ``cls`` from a ConfigDict / mapping, validating every field.

  Args:
    cls: a dataclass type (fields may be nested dataclasses).
    config: ``ml_collections.ConfigDict`` (anything with ``to_dict()``) or a ``Mapping``.
    path: name of the root used in error messages (``config`` -> ``config.ppo.lr``).

  Returns:
    An instance of ``cls``; fields missing from ``config`` keep their defaults.

  Raises:
    ConfigError: unknown fields (with a "did you mean" suggestion), ill-typed values
      (expected vs got), missing required fields; one line per problem, each starting with
      the dotted path.
  """
  if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
    raise TypeError(f"from_config: {cls!r} is not a dataclass type")
  mapping = _as_mapping(config)
  if mapping is None:
    raise ConfigError(f"{path}: expected a ConfigDict or mapping, got {_describe(config)}")
  errors: list[str] = []
  out = _build(cls, mapping, path, errors)
  if errors:
    raise ConfigError("\n".join(errors))
  return out


def to_dict(config: Any) -> dict:
  """Dataclass (possibly nested) -> plain dict of JSON-able values (tuples become lists)."""
  if not dataclasses.is_dataclass(config) or isinstance(config, type):
    raise TypeError(f"to_dict: expected a dataclass instance, got {type(config).__name__}")

  def plain(x):
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
      return {f.name: plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, (tuple, list)):
      return [plain(v) for v in x]
    if isinstance(x, Mapping):
      return {str(k): plain(v) for k, v in x.items()}
    return x

  return plain(config)
