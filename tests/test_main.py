"""Entry point: config file + overrides -> validated dataclass -> trainer.run; snapshot; errors."""

import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import types
from typing import Optional

import jax
import pytest
from absl import flags

from rlhf_jax import main as entry
from rlhf_jax.config_schema import ConfigError

_CONFIG_FILE = textwrap.dedent('''
    """Fake trainer config. Launch: python -m rlhf_jax.main --config this.py:steps=5 --workdir W"""
    import ml_collections

    def get_config(arg=None):
      args = dict(kv.split("=") for kv in arg.split(",")) if arg else {}
      c = ml_collections.ConfigDict()
      c.task = TASK
      c.lr = 0.1
      c.steps = int(args.get("steps", 3))
      c.ppo = ml_collections.ConfigDict({"kl_target": 6.0, "whiten": True})
      c.names = ("a", "b")
      c.compilation_cache_dir = ""
      EXTRA
      return c
''')


@dataclasses.dataclass(frozen=True)
class _PPO:
  kl_target: Optional[float] = 6.0
  whiten: bool = True


@dataclasses.dataclass(frozen=True)
class _Config:
  lr: float = 1e-3
  steps: int = 1
  ppo: _PPO = _PPO()
  names: tuple[str, ...] = ()


@pytest.fixture
def fake_task(monkeypatch):
  calls = []
  module = types.ModuleType("fake_rlhf_trainer")
  module.Config = _Config

  def run(cfg, workdir):
    calls.append((cfg, workdir))
    return {"final_loss": 0.25}

  module.run = run
  monkeypatch.setitem(sys.modules, "fake_rlhf_trainer", module)
  monkeypatch.setitem(entry.TASKS, "fake", "fake_rlhf_trainer")
  return calls


def _write_config(tmp_path, task="fake", extra=""):
  path = tmp_path / "cfg.py"
  path.write_text(_CONFIG_FILE.replace("TASK", repr(task)).replace("EXTRA", extra or "pass"))
  return path


def _parse_and_run(argv, monkeypatch):
  # config_flags finds the ``--config.x`` overrides in sys.argv, as in a real launch.
  argv = ["rlhf-jax", *argv]
  monkeypatch.setattr(sys, "argv", argv)
  flags.FLAGS.unparse_flags()
  try:
    flags.FLAGS(argv)
    entry.run_task(flags.FLAGS.config, flags.FLAGS.workdir)  # main() minus the exit status
  finally:
    flags.FLAGS.unparse_flags()
    for name in [n for n in flags.FLAGS if n.startswith("config.")]:
      delattr(flags.FLAGS, name)  # override flags are defined per parse


def test_overrides_dataclass_and_snapshot(tmp_path, fake_task, monkeypatch):
  path = _write_config(tmp_path)
  workdir = tmp_path / "run"
  _parse_and_run(
    [
      f"--config={path}:steps=5",
      f"--workdir={workdir}",
      "--config.lr=0.5",
      "--config.ppo.kl_target=3",
      "--config.ppo.whiten=False",
    ],
    monkeypatch,
  )
  ((cfg, wd),) = fake_task
  assert wd == str(workdir)
  assert cfg == _Config(lr=0.5, steps=5, ppo=_PPO(kl_target=3.0, whiten=False), names=("a", "b"))
  snapshot = json.loads((workdir / "config.json").read_text())
  assert snapshot == {
    "task": "fake",
    "compilation_cache_dir": "",
    "lr": 0.5,
    "steps": 5,
    "ppo": {"kl_target": 3.0, "whiten": False},
    "names": ["a", "b"],
  }


def test_unknown_field_and_bad_type_fail_before_snapshot(tmp_path, fake_task, monkeypatch):
  path = _write_config(tmp_path, extra="c.ppo.kl_targt = 1.0")
  with pytest.raises(
    ConfigError,
    match=r"config\.ppo\.kl_targt: unknown field; did you mean "
    r"config\.ppo\.kl_target\?",
  ):
    _parse_and_run([f"--config={path}", f"--workdir={tmp_path / 'a'}"], monkeypatch)
  path = _write_config(tmp_path, extra='c.names = ("a", 3)')
  with pytest.raises(ConfigError, match=r"config\.names\[1\]: expected str, got int 3"):
    _parse_and_run([f"--config={path}", f"--workdir={tmp_path / 'b'}"], monkeypatch)
  path = _write_config(tmp_path, extra="c.steps = None")  # a None placeholder never filled
  with pytest.raises(ConfigError, match=r"config\.steps: expected int, got NoneType None"):
    _parse_and_run([f"--config={path}", f"--workdir={tmp_path / 'b'}"], monkeypatch)
  # Overrides of typed fields are parsed by config_flags with the field's type ...
  path = _write_config(tmp_path)
  with pytest.raises(flags.IllegalFlagValueError, match=r"--config\.steps=2\.5"):
    _parse_and_run(
      [f"--config={path}", f"--workdir={tmp_path / 'c'}", "--config.steps=2.5"], monkeypatch
    )
  # ... so a wrongly typed field in the file passes config_flags and is caught here.
  path = _write_config(tmp_path, extra='c.ppo = ml_collections.ConfigDict({"kl_target": "6"})')
  with pytest.raises(ConfigError, match=r"config\.ppo\.kl_target: expected .*float.*, got str"):
    _parse_and_run(
      [f"--config={path}", f"--workdir={tmp_path / 'c'}", "--config.ppo.kl_target=abc"], monkeypatch
    )
  assert not fake_task
  assert not any((tmp_path / d / "config.json").exists() for d in "abc")


def test_unknown_task_lists_known_ones(tmp_path, fake_task):
  with pytest.raises(
    ValueError,
    match=r"unknown task 'ppoo'; known tasks: compare, fake, overoptimization, pipeline, ppo, "
    r"reward, sft",
  ):
    entry.run_task({"task": "ppoo"}, str(tmp_path))
  with pytest.raises(ValueError, match=r"config\.task: missing"):
    entry.run_task({"lr": 1.0}, str(tmp_path))
  with pytest.raises(ValueError, match=r"module 'no_such_pkg\.trainer' not found"):
    entry.run_task({"task": "no_such_pkg.trainer"}, str(tmp_path))
  with pytest.raises(ValueError, match=r"config\.distributed\.procs: unknown field"):
    entry.run_task({"task": "fake", "distributed": {"procs": 2}}, str(tmp_path))


def test_compilation_cache_enabled_from_config(tmp_path, fake_task):
  keys = (
    "jax_compilation_cache_dir",
    "jax_persistent_cache_min_compile_time_secs",
    "jax_persistent_cache_min_entry_size_bytes",
  )
  before = {k: jax.config.values[k] for k in keys}
  try:
    cache = tmp_path / "xla_cache"
    entry.run_task({"task": "fake", "compilation_cache_dir": str(cache)}, str(tmp_path / "w"))
    assert jax.config.values["jax_compilation_cache_dir"] == str(cache)
    assert jax.config.values["jax_persistent_cache_min_compile_time_secs"] == 0
    assert jax.config.values["jax_persistent_cache_min_entry_size_bytes"] == 0
    assert cache.is_dir() and len(fake_task) == 1
  finally:
    for k, v in before.items():
      jax.config.update(k, v)


def test_command_line_end_to_end(tmp_path):
  """``python -m rlhf_jax.main`` through absl.app.run, with a trainer given as a module path."""
  pkg = tmp_path / "faketasks"
  pkg.mkdir()
  (pkg / "__init__.py").write_text("")
  (pkg / "trainer.py").write_text(
    textwrap.dedent("""
      import dataclasses, json, os
      from typing import Optional

      @dataclasses.dataclass(frozen=True)
      class PPO:
        kl_target: Optional[float] = 6.0
        whiten: bool = True

      @dataclasses.dataclass(frozen=True)
      class Config:
        lr: float = 1e-3
        steps: int = 1
        ppo: PPO = PPO()
        names: tuple = ()

      def run(cfg, workdir):
        with open(os.path.join(workdir, "ran.json"), "w") as f:
          json.dump({"lr": cfg.lr, "steps": cfg.steps, "kl": cfg.ppo.kl_target}, f)
        return {"ok": 1}
  """)
  )
  path = _write_config(tmp_path, task="faketasks.trainer")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "RLHF_JAX_"))}
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join([root, str(tmp_path), env.get("PYTHONPATH", "")])
  workdir = tmp_path / "run"
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "rlhf_jax.main",
      f"--config={path}:steps=7",
      f"--workdir={workdir}",
      "--config.ppo.kl_target=2.5",
    ],
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads((workdir / "ran.json").read_text()) == {"lr": 0.1, "steps": 7, "kl": 2.5}
  assert json.loads((workdir / "config.json").read_text())["task"] == "faketasks.trainer"

  bad = subprocess.run(
    [
      sys.executable,
      "-m",
      "rlhf_jax.main",
      f"--config={path}",
      f"--workdir={workdir}",
      "--config.task=nope",
    ],
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert bad.returncode != 0
  assert (
    "unknown task 'nope'; known tasks: compare, overoptimization, pipeline, ppo, reward, sft"
    in bad.stderr
  )


# ----------------------------------------------------------------------------- exit statuses

ROOT = pathlib.Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def _parsed(argv, monkeypatch):
  """Flags parsed as ``rlhf_jax.main.run`` parses them (through ``_parse_flags``); yields the
  remaining argv. Flag and logging state are restored afterwards."""
  argv = ["rlhf-jax", *argv]
  monkeypatch.setattr(sys, "argv", argv)
  levels = {n: logging.getLogger(n).level for n in ("", "rlhf_jax", "absl")}
  flags.FLAGS.unparse_flags()
  try:
    yield entry._parse_flags(argv)
  finally:
    flags.FLAGS.unparse_flags()
    for name in [n for n in flags.FLAGS if n.startswith("config.")]:
      delattr(flags.FLAGS, name)
    for n, level in levels.items():
      logging.getLogger(n).setLevel(level)


def _cli(argv, monkeypatch) -> int:
  """Exit status of a command line run in this process."""
  try:
    with _parsed(argv, monkeypatch) as rest:
      entry.main(rest)
  except SystemExit as e:
    return e.code
  return 0


def test_user_errors_are_one_message_and_exit_2(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(ROOT)
  smoke = ["--config=configs/sentiment.py:smoke", f"--workdir={tmp_path / 'w'}"]
  cases = [
    (
      smoke + ["--config.ppo.kl_targt=3"],
      "config.ppo.kl_targt: unknown field; did you mean config.ppo.hparams.kl_target?",
    ),
    (["--config=configs/reward.py:nope", f"--workdir={tmp_path / 'w'}"], "unknown variant 'nope'"),
    (smoke + ["--config.ppo.batch_size=0"], "config.ppo.batch_size=0: expected >= 1"),
    (smoke + ["--config.reward.batch_size=-1"], "config.reward.batch_size=-1: expected >= 1"),
    (smoke + ["--config.ppo.iterations=-5"], "config.ppo.iterations=-5: expected >= 1"),
    (
      smoke + ["--config.ppo.batch_size=33"],
      "config.ppo.batch_size=33: must be divisible by config.ppo.hparams.num_minibatches=2",
    ),
    (
      smoke + ["--config.ppo.batch_size=30"],  # 8 simulated devices in the tests
      "config.ppo.batch_size=30: must be divisible by the 8 devices of the mesh's batch axes",
    ),
    (
      smoke + ["--config.feedback.gold_scorer=os:getcwd"],
      "config.feedback.gold_scorer='os:getcwd': calling it as scorer(prompts, responses)",
    ),
    (
      smoke + ["--config.ppo.hparams.epochs=0"],
      "config.ppo.hparams: PPOHparams.epochs must be >= 1, got 0",
    ),
    (smoke + ["--config.seed=1.5"], "--config.seed=1.5"),
  ]
  for argv, message in cases:
    assert _cli(argv, monkeypatch) == entry.EXIT_USER_ERROR, argv
    err = capsys.readouterr().err
    assert message in err, (argv, err)
    assert "Traceback" not in err and err.count("\n") <= 3, err
  assert not (tmp_path / "w" / "data").exists()  # refused before any work
  # --verbosity=debug adds the traceback.
  assert (
    _cli(smoke + ["--config.ppo.batch_size=0", "--verbosity=debug"], monkeypatch)
    == entry.EXIT_USER_ERROR
  )
  assert "Traceback" in capsys.readouterr().err


def test_output_path_taken_by_a_file_is_refused_at_start(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(ROOT)
  work = tmp_path / "w"
  work.mkdir()
  (work / "base").write_text("not a directory")
  assert (
    _cli(["--config=configs/sentiment.py:smoke", f"--workdir={work}"], monkeypatch)
    == entry.EXIT_USER_ERROR
  )
  assert f"output directory {work / 'base'} exists and is a file" in capsys.readouterr().err
  assert not (work / "data").exists()
  afile = tmp_path / "afile"
  afile.write_text("x")
  assert (
    _cli(["--config=configs/sentiment.py:smoke", f"--workdir={afile}"], monkeypatch)
    == entry.EXIT_USER_ERROR
  )
  assert f"--workdir={afile} exists and is not a directory" in capsys.readouterr().err


def test_preempted_run_exits_75(tmp_path, fake_task, monkeypatch, capsys):
  from rlhf_jax import checkpoint

  def preempted_run(cfg, workdir):
    os.kill(os.getpid(), signal.SIGTERM)  # handled by the entry point's guard
    checkpoint.check_preemption("the next stage")
    raise AssertionError("not reached")

  monkeypatch.setattr(sys.modules["fake_rlhf_trainer"], "run", preempted_run)
  path = _write_config(tmp_path)
  assert _cli([f"--config={path}", f"--workdir={tmp_path / 'w'}"], monkeypatch) == 75
  assert entry.EXIT_PREEMPTED == checkpoint.EXIT_PREEMPTED == 75
  err = capsys.readouterr().err
  assert "preempted: stopped by a signal before the next stage" in err
  assert "rerun the same command" in err
  checkpoint.clear_preemption()


def test_rerun_with_other_values_is_refused(tmp_path, fake_task, monkeypatch):
  path = _write_config(tmp_path)
  work = tmp_path / "w"
  _parse_and_run([f"--config={path}:steps=4", f"--workdir={work}"], monkeypatch)
  # Only config.json so far (the last attempt made nothing): other values are fine.
  _parse_and_run([f"--config={path}", f"--workdir={work}"], monkeypatch)
  (work / "stage").mkdir()  # work made by this config
  _parse_and_run([f"--config={path}", f"--workdir={work}"], monkeypatch)  # same: resumes
  before = (work / "config.json").read_text()
  with pytest.raises(entry.UsageError) as e:
    _parse_and_run(
      [f"--config={path}:steps=5", f"--workdir={work}", "--config.lr=0.5"], monkeypatch
    )
  message = str(e.value)
  assert "was made by a different config" in message
  assert "lr: 0.1 -> 0.5" in message and "steps: 3 -> 5" in message
  assert "pass a new --workdir" in message
  assert (work / "config.json").read_text() == before and len(fake_task) == 3
  # Fields that cannot change results may change.
  monkeypatch.setattr(
    sys.modules["fake_rlhf_trainer"], "RESULT_NEUTRAL_FIELDS", ("steps",), raising=False
  )
  _parse_and_run(
    [f"--config={path}:steps=5", f"--workdir={work}", "--config.compilation_cache_dir="],
    monkeypatch,
  )
  assert json.loads((work / "config.json").read_text())["steps"] == 5 and len(fake_task) == 4


def test_rerun_accepts_a_new_field_only_at_its_default(tmp_path, fake_task, monkeypatch):
  """A workdir made before a field existed (its config.json lacks ``ppo.whiten``, default
  True; ``names``, default ()) resumes when the field is at its default and is refused when
  it is not: the older code behaved as the default did."""
  path = _write_config(tmp_path)
  work = tmp_path / "w"
  _parse_and_run([f"--config={path}", f"--workdir={work}"], monkeypatch)
  (work / "stage").mkdir()
  snapshot = json.loads((work / "config.json").read_text())
  del snapshot["ppo"]["whiten"], snapshot["names"]
  (work / "config.json").write_text(json.dumps(snapshot))
  with pytest.raises(entry.UsageError) as e:  # the config file sets names = ("a", "b")
    _parse_and_run([f"--config={path}", f"--workdir={work}"], monkeypatch)
  assert "names: (absent: []) -> ['a', 'b']" in str(e.value)
  assert "whiten" not in str(e.value)
  _parse_and_run([f"--config={path}", f"--workdir={work}", "--config.names=()"], monkeypatch)
  snapshot = json.loads((work / "config.json").read_text())
  del snapshot["ppo"]["whiten"]
  (work / "config.json").write_text(json.dumps(snapshot))
  with pytest.raises(entry.UsageError, match=r"ppo.whiten: \(absent: True\) -> False"):
    _parse_and_run(
      [f"--config={path}", f"--workdir={work}", "--config.names=()", "--config.ppo.whiten=False"],
      monkeypatch,
    )


# ----------------------------------------------------------------------------- documented commands


def _documented_commands():
  """Every ``python -m rlhf_jax.main`` / ``launchers/local.sh`` command in the README and the
  config docstrings, as argv lists (line continuations joined, comments dropped)."""
  import ast

  sources = {"README.md": (ROOT / "README.md").read_text()}
  for path in sorted((ROOT / "configs").glob("*.py")):
    sources[f"configs/{path.name}"] = ast.get_docstring(ast.parse(path.read_text())) or ""
  commands = []
  for name, text in sources.items():
    text = re.sub(r"\\\n\s*", " ", text)
    for line in text.splitlines():
      line = line.split("#")[0].strip()
      m = re.match(r"(python -m rlhf_jax\.main|launchers/local\.sh)\s+(.*)", line)
      if not m:
        continue
      args = shlex.split(m.group(2))
      if m.group(1).startswith("launchers"):
        args = ["--config", args[0], "--workdir", args[1], *args[2:]]
      commands.append((name, args))
  return commands


def test_every_documented_command_passes_config_validation(tmp_path, monkeypatch):
  monkeypatch.chdir(ROOT)
  commands = _documented_commands()
  names = {n for n, _ in commands}
  assert {
    "README.md",
    "configs/sentiment.py",
    "configs/reward.py",
    "configs/ppo.py",
    "configs/sft.py",
    "configs/kind.py",
    "configs/overoptimization.py",
    "configs/assistant.py",
    "configs/sycophancy.py",
  } <= names
  assert len(commands) >= 17, commands
  for name, argv in commands:
    with _parsed(argv, monkeypatch):
      module, cfg = entry.validate(flags.FLAGS.config)
    assert module.Config is type(cfg), (name, argv)


def test_readme_error_example_is_what_the_cli_prints(tmp_path, monkeypatch, capsys):
  readme = (ROOT / "README.md").read_text()
  m = re.search(r"`(--config\.[\w.]+=\S+)` prints `([^`]+)`", re.sub(r"\s*\n\s*", " ", readme))
  assert m, "README shows an error example"
  monkeypatch.chdir(ROOT)
  assert (
    _cli(["--config=configs/sentiment.py:smoke", f"--workdir={tmp_path}", m.group(1)], monkeypatch)
    == entry.EXIT_USER_ERROR
  )
  assert f"error: {m.group(2)}" in capsys.readouterr().err


def test_verbosity_levels(monkeypatch):
  """Default (warning): our progress lines and everyone's warnings; library INFO (absl, which
  orbax and TFDS log through, and JAX) silenced. info: library INFO too. debug: ours at DEBUG."""
  import tensorflow_datasets as tfds
  from tensorflow_datasets.core.utils import tqdm_utils

  names = ("", "rlhf_jax", "absl")
  saved = {n: logging.getLogger(n).level for n in names}
  logging.getLogger("absl").setLevel(logging.WARNING)  # as absl.logging.set_verbosity leaves it
  try:
    entry.configure_logging(entry._VERBOSITY_NAMES["warning"])
    assert logging.getLogger("rlhf_jax.train.metrics").isEnabledFor(logging.INFO)
    for lib in ("absl", "jax._src.dispatch", "orbax.checkpoint"):
      assert not logging.getLogger(lib).isEnabledFor(logging.INFO), lib
      assert logging.getLogger(lib).isEnabledFor(logging.WARNING), lib
    assert not tqdm_utils._active  # TFDS progress bars off
    entry.configure_logging(entry._VERBOSITY_NAMES["info"])
    assert logging.getLogger("absl").isEnabledFor(logging.INFO)
    assert not logging.getLogger("rlhf_jax").isEnabledFor(logging.DEBUG)
    entry.configure_logging(entry._VERBOSITY_NAMES["debug"])
    assert logging.getLogger("rlhf_jax.train").isEnabledFor(logging.DEBUG)
  finally:
    for n, level in saved.items():
      logging.getLogger(n).setLevel(level)
    tfds.enable_progress_bar()
  assert flags.FLAGS["verbosity"].parser.parse("debug") == 1
  assert flags.FLAGS["verbosity"].parser.parse("2") == 2


def test_every_config_variant_loads_and_validates(monkeypatch):
  """Each configs/*.py lists its VARIANTS; each one passes its trainer's schema and start-up
  checks, and an unknown variant is refused naming the file."""
  import importlib.util

  monkeypatch.chdir(ROOT)
  files = sorted((ROOT / "configs").glob("*.py"))
  assert {f.name for f in files} >= {
    "sentiment.py",
    "kind.py",
    "overoptimization.py",
    "ppo.py",
    "reward.py",
    "sft.py",
    "assistant.py",
    "sycophancy.py",
  }
  # Fields a user must supply (the README's commands do); everything else as shipped.
  required = {
    "reward.py": {"model.path": "runs/sentiment/base/model", "preferences": "prefs.jsonl"},
    "sft.py:jsonl": {"data.path": "texts.jsonl", "model.path": "runs/base/model"},
  }
  checked = 0
  for path in files:
    if path.name == "common.py":  # the configs' shared pieces, not a config
      continue
    spec = importlib.util.spec_from_file_location(f"_cfg_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.VARIANTS, path
    for variant in module.VARIANTS:
      config = module.get_config(variant)
      for key, value in {
        **required.get(path.name, {}),
        **required.get(f"{path.name}:{variant}", {}),
      }.items():
        section, _, field = key.rpartition(".")
        (config[section] if section else config)[field] = value
      trainer, cfg = entry.validate(config)
      assert trainer.Config is type(cfg), (path.name, variant)
      checked += 1
    with pytest.raises(ValueError, match=path.name):
      module.get_config("nope")
  assert checked >= 15
