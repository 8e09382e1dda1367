"""Test-session setup: 8 simulated CPU devices so mesh code runs in every test process, and a
test-run-local persistent compilation cache so identical programs built by different tests
(each trainer call builds fresh closures), on either xdist worker, compile once."""

import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "")
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
# One cache per test run, shared by its pytest-xdist workers (they share the run's id), so a
# program one worker compiled is read, not recompiled, by the other.
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID")
_CACHE = (
  os.path.join(tempfile.gettempdir(), f"rlhf_jax_xla_cache_{_RUN}")
  if _RUN
  else tempfile.mkdtemp(prefix="rlhf_jax_xla_cache_")
)
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


# The longest files go first, so that with one pytest-xdist worker per core (launchers/test.sh)
# no worker starts a long file when the others are nearly done.
_LONG_FILES = ("test_pipeline.py", "test_ppo.py", "test_critic_free.py", "test_dpo.py")


def pytest_collection_modifyitems(config, items):
  def rank(item):
    name = item.path.name
    return _LONG_FILES.index(name) if name in _LONG_FILES else len(_LONG_FILES)

  items.sort(key=rank)  # stable: the order within a file is kept
