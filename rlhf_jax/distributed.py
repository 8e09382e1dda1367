"""Multi-controller runtime: ``jax.distributed`` start-up and per-process data / seeds.

JAX programs run one process per host (TPU VM, GPU node, or several CPU processes locally);
every process runs the same program on global arrays, and ``jax.distributed.initialize``
connects them. There is no cluster layer here beyond that call:

* explicit arguments for local or hand-launched runs::

      maybe_initialize("10.0.0.1:1234", num_processes=2, process_id=int(os.environ["RANK"]))

* environment variables, for launchers that start any command N times
  (``launchers/multiprocess.sh``; like ``torchrun``'s ``MASTER_ADDR`` / ``RANK``):
  ``RLHF_JAX_COORDINATOR_ADDRESS`` (``host:port``), ``RLHF_JAX_NUM_PROCESSES`` and
  ``RLHF_JAX_PROCESS_ID`` fill the arguments that are not given explicitly;

* no arguments on SLURM, Open MPI, multi-host Cloud TPU (GKE env vars) and other clusters
  JAX detects itself; ``maybe_initialize()`` calls ``jax.distributed.initialize()`` when it sees
  such an environment. Multi-host Cloud TPU VMs outside GKE are detected by JAX through the
  metadata server only, so pass ``auto=True`` there (or set ``RLHF_JAX_DISTRIBUTED=auto``).

Call it before anything touches devices (``jax.devices()``, creating arrays).

Work that must happen once — writing files to a shared workdir, downloads, calls to judges
and annotators — runs on process 0 through :func:`lead_only` (the others wait for it) or
:func:`from_lead` (its result reaches every process); an exception raised there is raised in
every process, so they all stop with the same error instead of waiting for a peer that left.
"""

from __future__ import annotations

import logging
import os
import pickle
import zlib
from typing import Any, Callable, Optional, Sequence, TypeVar, Union

import jax
import numpy as np

__all__ = [
  "cluster_detected",
  "maybe_initialize",
  "process_slice",
  "per_process_seed",
  "is_lead",
  "lead_only",
  "from_lead",
]

T = TypeVar("T")

_log = logging.getLogger(__name__)

# Set by launchers/multiprocess.sh for every process it starts (read by maybe_initialize).
ENV_COORDINATOR = "RLHF_JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "RLHF_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "RLHF_JAX_PROCESS_ID"


def _launcher_env() -> dict:
  """``coordinator_address`` / ``num_processes`` / ``process_id`` from the ``RLHF_JAX_*``
  variables a launcher set (only those present). Raises ValueError naming a malformed one."""
  out: dict = {}
  if os.environ.get(ENV_COORDINATOR):
    address = os.environ[ENV_COORDINATOR].strip()
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
      raise ValueError(f"${ENV_COORDINATOR}={address!r}: expected host:port")
    out["coordinator_address"] = address
  for name, key in ((ENV_NUM_PROCESSES, "num_processes"), (ENV_PROCESS_ID, "process_id")):
    if os.environ.get(name, "").strip():
      try:
        out[key] = int(os.environ[name])
      except ValueError:
        raise ValueError(f"${name}={os.environ[name]!r}: expected an integer") from None
  return out


def _int_env(name: str) -> Optional[int]:
  try:
    return int(os.environ[name])
  except (KeyError, ValueError):
    return None


def cluster_detected() -> Optional[str]:
  """Name of a detected multi-process environment, or ``None``.

  Looks only at environment variables (no network): ``RLHF_JAX_DISTRIBUTED`` (``auto`` / ``1``
  forces, ``0`` disables), ``RLHF_JAX_COORDINATOR_ADDRESS``, ``JAX_COORDINATOR_ADDRESS``,
  SLURM with more than one task, Open MPI with more than one rank, and Cloud TPU on GKE with
  more than one worker.
  """
  forced = os.environ.get("RLHF_JAX_DISTRIBUTED", "").strip().lower()
  if forced in ("0", "false", "no", "off"):
    return None
  if forced in ("1", "true", "yes", "auto"):
    return "RLHF_JAX_DISTRIBUTED"
  if os.environ.get(ENV_COORDINATOR):
    return ENV_COORDINATOR
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    return "JAX_COORDINATOR_ADDRESS"
  slurm_vars = (
    "SLURM_JOB_ID",
    "SLURM_STEP_NODELIST",
    "SLURM_NTASKS",
    "SLURM_PROCID",
    "SLURM_LOCALID",
  )
  if all(v in os.environ for v in slurm_vars) and (_int_env("SLURM_NTASKS") or 1) > 1:
    return "slurm"
  if "OMPI_MCA_orte_hnp_uri" in os.environ and (_int_env("OMPI_COMM_WORLD_SIZE") or 2) > 1:
    return "openmpi"
  for var in ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES"):
    if len([h for h in os.environ.get(var, "").split(",") if h.strip()]) > 1:
      return "cloud-tpu"
  return None


def _is_initialized() -> bool:
  fn = getattr(jax.distributed, "is_initialized", None)
  if fn is not None:
    return bool(fn())
  from jax._src import distributed as _dist  # jax versions without is_initialized()

  return _dist.global_state.client is not None


def maybe_initialize(
  coordinator_address: Optional[str] = None,
  num_processes: Optional[int] = None,
  process_id: Optional[int] = None,
  local_device_ids: Optional[Union[int, Sequence[int]]] = None,
  *,
  auto: bool = False,
  initialization_timeout: int = 300,
  heartbeat_timeout_seconds: Optional[int] = None,
) -> bool:
  """Calls ``jax.distributed.initialize`` once, when there is something to initialise.

  Arguments left ``None`` are taken from ``$RLHF_JAX_COORDINATOR_ADDRESS``,
  ``$RLHF_JAX_NUM_PROCESSES`` and ``$RLHF_JAX_PROCESS_ID`` when set (``launchers/
  multiprocess.sh``).

  Args:
    coordinator_address: ``host:port`` of process 0's coordinator service.
    num_processes: total number of processes.
    process_id: this process's index in ``[0, num_processes)``.
    local_device_ids: devices this process owns (GPU clusters with several processes per
      node).
    auto: call ``jax.distributed.initialize()`` with JAX's own cluster auto-detection even if
      :func:`cluster_detected` sees nothing (multi-host Cloud TPU VMs).
    initialization_timeout: seconds to wait for all processes to connect.
    heartbeat_timeout_seconds: seconds without a heartbeat after which the coordination
      service declares a process dead and the others fail with an error naming it (JAX's
      default, 100 s, when ``None``). Lower it to notice a killed peer sooner; keep it above
      the longest pause of a live process (a long compile does not stop heartbeats).

  Returns:
    ``True`` if this call initialised the runtime; ``False`` when it was already initialised,
    or nothing is configured and no cluster is detected (single-process run).

  Raises:
    ValueError: ``num_processes`` / ``process_id`` given inconsistently, or a malformed
      ``RLHF_JAX_*`` variable.
  """
  if _is_initialized():
    _log.info(
      "jax.distributed already initialised (process %d of %d)",
      jax.process_index(),
      jax.process_count(),
    )
    return False
  env = _launcher_env()
  if coordinator_address is None:
    coordinator_address = env.get("coordinator_address")
  num_processes = env.get("num_processes") if num_processes is None else num_processes
  process_id = env.get("process_id") if process_id is None else process_id
  explicit = any(
    v is not None for v in (coordinator_address, num_processes, process_id, local_device_ids)
  )
  detected = cluster_detected()
  if not (explicit or auto or detected):
    return False
  if num_processes is not None and num_processes < 1:
    raise ValueError(f"distributed.num_processes={num_processes}: must be >= 1")
  if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
    raise ValueError(f"distributed.process_id={process_id}: must be in [0, {num_processes})")
  if num_processes == 1 and coordinator_address is None:
    return False
  _log.info(
    "jax.distributed.initialize(coordinator_address=%s, num_processes=%s, "
    "process_id=%s, local_device_ids=%s)%s",
    coordinator_address,
    num_processes,
    process_id,
    local_device_ids,
    f" [detected: {detected}]" if detected else "",
  )
  jax.distributed.initialize(
    coordinator_address=coordinator_address,
    num_processes=num_processes,
    process_id=process_id,
    local_device_ids=local_device_ids,
    initialization_timeout=initialization_timeout,
    **(
      {}
      if heartbeat_timeout_seconds is None
      else {"heartbeat_timeout_seconds": int(heartbeat_timeout_seconds)}
    ),
  )
  _log.info(
    "process %d of %d; %d local / %d global devices",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
  return True


def process_slice(
  n_items: int, process_index: Optional[int] = None, process_count: Optional[int] = None
) -> slice:
  """The contiguous share of ``n_items`` items that ``process_index`` reads.

  Shares differ by at most one item (the first ``n_items % process_count`` processes get one
  more). For global batches every process needs the same share, so keep ``n_items`` (or the
  per-step global batch) divisible by ``process_count``.

  Args:
    n_items: number of items (records, batch rows).
    process_index / process_count: default ``jax.process_index()`` / ``jax.process_count()``.
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(
      f"process_slice: process_index={process_index} is not in [0, process_count={process_count})"
    )
  if n_items < 0:
    raise ValueError(f"process_slice: n_items={n_items} must be >= 0")
  base, extra = divmod(n_items, process_count)
  start = process_index * base + min(process_index, extra)
  return slice(start, start + base + (1 if process_index < extra else 0))


def per_process_seed(seed: int, process_index: Optional[int] = None) -> int:
  """A seed for this process's host-side randomness (data order, host sampling).

  Deterministic in ``(seed, process_index)`` and different across processes (each process
  draws its own data order and samples, as lm-human-preferences does). Returns an int in ``[0, 2**31)``,
  valid for ``np.random.default_rng`` and ``jax.random.key``. Device-side randomness of a
  global computation should instead fold a shared key (all processes must agree on it).
  """
  process_index = jax.process_index() if process_index is None else process_index
  if seed < 0 or process_index < 0:
    raise ValueError(
      f"per_process_seed: seed={seed} and process_index={process_index} must be >= 0"
    )
  state = np.random.SeedSequence([int(seed), int(process_index)]).generate_state(1, np.uint32)
  return int(state[0] >> 1)


# ----------------------------------------------------------------------------- once, on process 0


def is_lead() -> bool:
  """Whether this is process 0: the one that writes files and calls judges."""
  return jax.process_index() == 0


def _broadcast_bytes(payload: bytes, name: str) -> bytes:
  """``payload`` of process 0 in every process (a collective: every process calls it, with the
  same ``name``; only process 0's ``payload`` is read). Raises RuntimeError when the processes
  are at different points (their ``name`` differs): their control flow has diverged."""
  from jax.experimental import multihost_utils

  lead = is_lead()
  size = len(payload) if lead else 0
  header = np.asarray([zlib.crc32(name.encode()), size], np.uint32)
  lead_crc, size = (int(v) for v in multihost_utils.broadcast_one_to_all(header))
  if lead_crc != int(header[0]):
    raise RuntimeError(
      f"process {jax.process_index()} reached {name!r} while process 0 is elsewhere "
      "(crc32 of its step name differs): the processes' control flow has diverged"
    )
  # Power-of-two buffers: a few compiled broadcasts serve payloads of every size.
  buf = np.zeros(max(256, 1 << (max(size, 1) - 1).bit_length()), np.uint8)
  if lead:
    buf[:size] = np.frombuffer(payload, np.uint8)
  return np.asarray(multihost_utils.broadcast_one_to_all(buf))[:size].tobytes()


# > 0 while process 0 runs the function of a lead_only / from_lead call: calls nested in it
# (a judge wrapped with from_lead inside a lead-only stage) run directly, as the other
# processes never reach them.
_lead_depth = 0


def _once(fn: Callable[[], T], name: str, share: bool) -> Optional[T]:
  """:func:`lead_only` (``share=False``) and :func:`from_lead` (``share=True``)."""
  global _lead_depth
  if jax.process_count() == 1 or _lead_depth:  # single-process, or nested in the lead's fn
    return fn()
  if not is_lead():
    ok, value = pickle.loads(_broadcast_bytes(b"", name))
    if not ok:
      raise value from RuntimeError(f"raised by process 0 in {name!r}")
    return value
  _lead_depth += 1
  error = None
  try:
    result = fn()
    payload = pickle.dumps((True, result if share else None))
  except Exception as e:  # raised here and, pickled, in every other process
    error = e
    try:
      payload = pickle.dumps((False, e))
    except Exception:  # an exception that does not pickle: its type and message
      payload = pickle.dumps((False, RuntimeError(f"{type(e).__name__}: {e}")))
  finally:
    _lead_depth -= 1
  _broadcast_bytes(payload, name)
  if error is not None:
    raise error
  return result


def lead_only(fn: Callable[[], Any], name: str) -> None:
  """Calls ``fn()`` on process 0 only; every other process waits until it has returned.

  For work that must happen once and whose result the others read from the (shared) disk
  afterwards: writing outputs, downloading a corpus, training a tokenizer. An exception
  ``fn`` raises is raised in every process (a user error stops them all with the same
  message). Single-process: ``fn()``.

  A collective: every process must call it at the same point with the same ``name`` (a
  mismatch raises RuntimeError instead of pairing unrelated steps).
  """
  _once(fn, name, share=False)


def from_lead(fn: Callable[[], T], name: str) -> T:
  """``fn()`` computed on process 0 only and returned in every process (pickled and
  broadcast through the devices): judge and annotator calls, decisions that read the disk
  (whether a stage is done). ``fn``'s result must pickle. Exceptions and the collective's
  rules as :func:`lead_only`."""
  return _once(fn, name, share=True)
