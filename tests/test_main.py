"""Entry point: config file + overrides -> validated dataclass -> trainer.run; snapshot; errors."""

import dataclasses
import json
import os
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
      delattr(flags.FLAGS, name)     # override flags are defined per parse


def test_overrides_dataclass_and_snapshot(tmp_path, fake_task, monkeypatch):
  path = _write_config(tmp_path)
  workdir = tmp_path / "run"
  _parse_and_run([f"--config={path}:steps=5", f"--workdir={workdir}", "--config.lr=0.5",
                  "--config.ppo.kl_target=3", "--config.ppo.whiten=False"], monkeypatch)
  (cfg, wd), = fake_task
  assert wd == str(workdir)
  assert cfg == _Config(lr=0.5, steps=5, ppo=_PPO(kl_target=3.0, whiten=False),
                        names=("a", "b"))
  snapshot = json.loads((workdir / "config.json").read_text())
  assert snapshot == {"task": "fake", "compilation_cache_dir": "", "lr": 0.5, "steps": 5,
                      "ppo": {"kl_target": 3.0, "whiten": False}, "names": ["a", "b"]}


def test_unknown_field_and_bad_type_fail_before_snapshot(tmp_path, fake_task, monkeypatch):
  path = _write_config(tmp_path, extra="c.ppo.kl_targt = 1.0")
  with pytest.raises(ConfigError, match=r"config\.ppo\.kl_targt: unknown field; did you mean "
                                        r"config\.ppo\.kl_target\?"):
    _parse_and_run([f"--config={path}", f"--workdir={tmp_path / 'a'}"], monkeypatch)
  path = _write_config(tmp_path, extra='c.names = ("a", 3)')
  with pytest.raises(ConfigError, match=r"config\.names\[1\]: expected str, got int 3"):
    _parse_and_run([f"--config={path}", f"--workdir={tmp_path / 'b'}"], monkeypatch)
  path = _write_config(tmp_path, extra='c.steps = None')   # a None placeholder never filled
  with pytest.raises(ConfigError, match=r"config\.steps: expected int, got NoneType None"):
    _parse_and_run([f"--config={path}", f"--workdir={tmp_path / 'b'}"], monkeypatch)
  # Overrides of typed fields are parsed by config_flags with the field's type ...
  path = _write_config(tmp_path)
  with pytest.raises(flags.IllegalFlagValueError, match=r"--config\.steps=2\.5"):
    _parse_and_run([f"--config={path}", f"--workdir={tmp_path / 'c'}", "--config.steps=2.5"],
                   monkeypatch)
  # ... so a wrongly typed field in the file passes config_flags and is caught here.
  path = _write_config(tmp_path, extra='c.ppo = ml_collections.ConfigDict({"kl_target": "6"})')
  with pytest.raises(ConfigError, match=r"config\.ppo\.kl_target: expected .*float.*, got str"):
    _parse_and_run([f"--config={path}", f"--workdir={tmp_path / 'c'}",
                    "--config.ppo.kl_target=abc"], monkeypatch)
  assert not fake_task
  assert not any((tmp_path / d / "config.json").exists() for d in "abc")


def test_unknown_task_lists_known_ones(tmp_path, fake_task):
  with pytest.raises(ValueError, match=r"unknown task 'ppoo'; known tasks: fake, overoptimization, pipeline, ppo, "
                                       r"reward, sft"):
    entry.run_task({"task": "ppoo"}, str(tmp_path))
  with pytest.raises(ValueError, match=r"config\.task: missing"):
    entry.run_task({"lr": 1.0}, str(tmp_path))
  with pytest.raises(ValueError, match=r"module 'no_such_pkg\.trainer' not found"):
    entry.run_task({"task": "no_such_pkg.trainer"}, str(tmp_path))
  with pytest.raises(ValueError, match=r"config\.distributed\.procs: unknown field"):
    entry.run_task({"task": "fake", "distributed": {"procs": 2}}, str(tmp_path))


def test_compilation_cache_enabled_from_config(tmp_path, fake_task):
  keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
          "jax_persistent_cache_min_entry_size_bytes")
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
  (pkg / "trainer.py").write_text(textwrap.dedent('''
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
  '''))
  path = _write_config(tmp_path, task="faketasks.trainer")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "RLHF_JAX_"))}
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join([root, str(tmp_path), env.get("PYTHONPATH", "")])
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "-m", "rlhf_jax.main", f"--config={path}:steps=7",
       f"--workdir={workdir}", "--config.ppo.kl_target=2.5"],
      env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads((workdir / "ran.json").read_text()) == {"lr": 0.1, "steps": 7, "kl": 2.5}
  assert json.loads((workdir / "config.json").read_text())["task"] == "faketasks.trainer"

  bad = subprocess.run(
      [sys.executable, "-m", "rlhf_jax.main", f"--config={path}", f"--workdir={workdir}",
       "--config.task=nope"], env=env, capture_output=True, text=True, timeout=120)
  assert bad.returncode != 0
  assert "unknown task 'nope'; known tasks: overoptimization, pipeline, ppo, reward, sft" in bad.stderr
