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
import importlib.util
import math
import numbers
import os
import sys
import types
import typing
from typing import Any, Literal, Mapping, Optional, Union

__all__ = [
  "ConfigError",
  "from_config",
  "to_dict",
  "check_bounds",
  "nearest_path",
  "field_paths",
  "flatten",
  "diff",
  "config_module",
]


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
    if len(options) == 1 and (
      dataclasses.is_dataclass(options[0]) or typing.get_origin(options[0]) in (tuple, typing.Tuple)
    ):
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
      raise _Invalid(
        path,
        f"expected {_type_name(tp)} with {len(args)} elements, got "
        f"{len(value)}: {_describe(value)}",
      )
    return tuple(
      _convert(a, v, f"{path}[{i}]", errors) for i, (a, v) in enumerate(zip(args, value))
    )

  if origin in (dict, typing.Dict) or tp is dict:
    mapping = _as_mapping(value)
    if mapping is None:
      _fail(path, tp, value)
    if not args:
      return dict(mapping)
    return {
      _convert(args[0], k, f"{path}[{k!r}]", errors): _convert(args[1], v, f"{path}.{k}", errors)
      for k, v in mapping.items()
    }

  if origin is not None:
    raise _Invalid(path, f"unsupported field type {_type_name(tp)}")

  is_bool = isinstance(value, bool) or type(value).__name__ == "bool_"  # numpy's too
  if tp is bool:
    if is_bool:
      return bool(value)
    _fail(path, tp, value)
  if is_bool and tp in (int, float):  # a bool is never a number here
    _fail(path, tp, value)
  if tp is int:
    if isinstance(value, numbers.Integral):
      return int(value)
    if isinstance(value, numbers.Real) and float(value).is_integer():
      return int(value)
    if isinstance(value, numbers.Real):
      raise _Invalid(path, f"expected int, got non-integral {_describe(value)}")
    _fail(path, tp, value)
  if tp is float:
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


def _dataclass_of(tp: Any) -> Any:
  """The dataclass type inside ``tp`` (itself, or the X of ``Optional[X]``), else ``None``."""
  if dataclasses.is_dataclass(tp) and isinstance(tp, type):
    return tp
  if typing.get_origin(tp) is Union or (
    hasattr(types, "UnionType") and isinstance(tp, types.UnionType)
  ):
    inner = [_dataclass_of(a) for a in typing.get_args(tp)]
    inner = [a for a in inner if a is not None]
    return inner[0] if len(inner) == 1 else None
  return None


def field_paths(cls: type, prefix: str = "") -> list[str]:
  """Every dotted field path of a (nested) dataclass type: ``['ppo', 'ppo.kl_target', ...]``."""
  out = []
  hints = typing.get_type_hints(cls)
  for f in dataclasses.fields(cls):
    if not f.init:
      continue
    path = f"{prefix}{f.name}"
    out.append(path)
    inner = _dataclass_of(hints[f.name])
    if inner is not None:
      out.extend(field_paths(inner, path + "."))
  return out


def nearest_path(wanted: str, paths: Any) -> str | None:
  """The valid dotted path closest to a misspelt or misplaced ``wanted`` (``ppo.kl_targt`` ->
  ``ppo.hparams.kl_target``): the closest last component, ties broken by the shared prefix;
  else the closest full path. ``None`` when nothing is close."""
  paths = list(paths)
  head, _, last = wanted.rpartition(".")
  best, best_key = None, None
  for p in paths:
    p_head, _, p_last = p.rpartition(".")
    ratio = difflib.SequenceMatcher(None, last, p_last).ratio()
    if ratio < 0.7:
      continue
    shared = len(os.path.commonprefix([head.split("."), p_head.split(".")])) if head else 0
    key = (ratio, shared, -len(p))
    if best_key is None or key > best_key:
      best, best_key = p, key
  if best is not None:
    return best
  close = difflib.get_close_matches(wanted, paths, n=1, cutoff=0.75)
  return close[0] if close else None


class _Errors(list):
  """The error list of one ``from_config`` call, with every valid path of its root class."""

  def __init__(self, root: str = "config", paths: Any = ()):
    super().__init__()
    self.root = root
    self.paths = list(paths)


def _unknown_field_hint(errors: list, path: str, key: str, fields: Any) -> str:
  root = getattr(errors, "root", None)
  if root and (path == root or path.startswith(root + ".")):
    rel = f"{path[len(root) + 1 :]}.{key}" if path != root else str(key)
    near = nearest_path(rel, errors.paths)  # siblings first among equally close names
    if near is not None:
      return f"; did you mean {root}.{near}?"
  close = difflib.get_close_matches(str(key), list(fields), n=1)
  return f"; did you mean {path}.{close[0]}?" if close else ""


def _build(cls: type, mapping: Mapping, path: str, errors: list[str]) -> Any:
  hints = typing.get_type_hints(cls)
  fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
  kwargs = {}
  for key in mapping:
    if key not in fields:
      hint = _unknown_field_hint(errors, path, key, fields)
      errors.append(
        f"{path}.{key}: unknown field{hint} (fields of {cls.__name__}: {', '.join(fields)})"
      )
  for name, field in fields.items():
    sub = f"{path}.{name}"
    if name not in mapping:
      if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:  # type: ignore[misc]
        errors.append(f"{sub}: missing required field of type {_type_name(hints[name])}")
      continue
    try:
      kwargs[name] = _convert(hints[name], mapping[name], sub, errors)
    except _Invalid as e:
      errors.append(str(e))
  if errors:
    return None
  try:
    return cls(**kwargs)
  except (ValueError, TypeError) as e:  # a dataclass's own checks (__post_init__)
    errors.append(f"{path}: {e}")
    return None


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
  errors = _Errors(path, field_paths(cls))
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


# ----------------------------------------------------------------------------- value checks


def _values(obj: Any, parts: list[str], path: str):
  if not parts:
    yield path, obj
    return
  part, rest = parts[0], parts[1:]
  if part == "[*]":
    for i, v in enumerate(obj or ()):
      yield from _values(v, rest, f"{path}[{i}]")
    return
  yield from _values(getattr(obj, part), rest, f"{path}.{part}")


def _split(path: str) -> list[str]:
  return [p for p in path.replace("[*]", ".[*]").split(".") if p]


def check_bounds(cfg: Any, rules: Mapping[str, str], root: str = "config") -> list[str]:
  """Checks numeric fields of a built config against simple bounds; returns error lines.

  Args:
    cfg: a dataclass instance (e.g. from :func:`from_config`).
    rules: dotted path (``ppo.batch_size``; ``label_counts[*]`` for every element of a
      tuple) -> ``">= 1"``, ``"> 0"``, ``">= 0"``, ``"in [0, 1]"`` or ``"in (0, 1)"``
      (bounds may be any numbers). ``None`` values pass (optional fields).
    root: name of the root in messages.

  Returns:
    ``["config.ppo.batch_size=0: expected >= 1", ...]``.
  """
  errors = []
  for path, rule in rules.items():
    op, _, bound = rule.strip().partition(" ")
    for where, value in _values(cfg, _split(path), root):
      if value is None:
        continue
      ok = isinstance(value, numbers.Real) and math.isfinite(value)
      if ok and op in (">=", ">", "<=", "<"):
        b = float(bound)
        ok = {">=": value >= b, ">": value > b, "<=": value <= b, "<": value < b}[op]
      elif ok and op == "in":
        lo, hi = (float(x) for x in bound.strip("[]() ").split(","))
        ok = (value >= lo if bound.startswith("[") else value > lo) and (
          value <= hi if bound.endswith("]") else value < hi
        )
      if not ok:
        errors.append(f"{where}={value!r}: expected {rule}")
  return errors


def flatten(tree: Any, prefix: str = "") -> dict:
  """Nested dicts (e.g. a ``config.json`` snapshot) -> ``{"a.b.c": leaf}``."""
  out = {}
  if isinstance(tree, Mapping) and tree:
    for k, v in tree.items():
      out.update(flatten(v, f"{prefix}{k}."))
  else:
    out[prefix[:-1]] = tree
  return out


def diff(
  old: Mapping, new: Mapping, ignore: Any = (), defaults: Optional[Mapping] = None
) -> list[str]:
  """Fields whose values differ between two snapshots, as ``"path: old -> new"`` lines.

  Paths equal to or under an entry of ``ignore`` are skipped. A path present in only one
  snapshot (a field added or removed by another version of the code) is not compared —
  unless ``defaults`` (a snapshot of the defaults) is given and the field is new: then a
  value other than its default is a change (the older code behaved as the default, so
  a new field set otherwise would not describe what made ``old``)."""
  a, b = flatten(old), flatten(new)
  d = flatten(defaults) if defaults is not None else {}
  ignore = tuple(ignore)

  def ignored(p):
    return any(p == i or p.startswith(i + ".") for i in ignore)

  lines = []
  for p in sorted(set(a) | set(b)):
    if ignored(p):
      continue
    if p in a and p in b:
      if a[p] != b[p]:
        lines.append(f"{p}: {a[p]!r} -> {b[p]!r}")
    elif p in b and p in d and b[p] != d[p]:
      lines.append(f"{p}: (absent: {d[p]!r}) -> {b[p]!r}")
  return lines


def config_module(config_file: str, name: str) -> types.ModuleType:
  """The config module ``name`` next to ``config_file`` (e.g. ``configs/common.py`` for a
  file of ``configs/``), loaded by path: config files are loaded by path too
  (``ml_collections.config_flags``) and ``configs/`` is not a package, so this works from any
  working directory. Each file is loaded once (kept in ``sys.modules``).

  Use in a config file: ``common = config_module(__file__, "common")``.
  """
  path = os.path.join(os.path.dirname(os.path.abspath(config_file)), name + ".py")
  key = "_rlhf_jax_config:" + path
  if key not in sys.modules:
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{config_file}: no config module {name!r} at {path}")
    spec = importlib.util.spec_from_file_location(key, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    try:
      spec.loader.exec_module(module)
    except BaseException:
      del sys.modules[key]
      raise
  return sys.modules[key]
