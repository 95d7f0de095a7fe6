"""Multi-host start-up: ``jax.distributed.initialize()`` when the environment says so.

Recognised: explicit ``TTPA_COORDINATOR`` / ``TTPA_NUM_PROCESSES`` / ``TTPA_PROCESS_ID`` (set by
``launch/`` scripts or the ``--coordinator`` flags of the CLIs), SLURM (``SLURM_NTASKS`` > 1), and TPU
pods (``TPU_WORKER_HOSTNAMES`` with more than one host); JAX discovers the rest itself.
"""

from __future__ import annotations

import os

_initialized = False


def maybe_initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None) -> bool:
    """Initialise the distributed runtime if this is a multi-process run. Returns whether it did."""
    global _initialized
    if _initialized:
        return True
    import jax  # deferred: keeps this module JAX-free

    coordinator = coordinator or os.environ.get("TTPA_COORDINATOR")
    if num_processes is None and os.environ.get("TTPA_NUM_PROCESSES"):
        num_processes = int(os.environ["TTPA_NUM_PROCESSES"])
    if process_id is None and os.environ.get("TTPA_PROCESS_ID"):
        process_id = int(os.environ["TTPA_PROCESS_ID"])
    if coordinator:
        if os.environ.get("JAX_PLATFORMS", "") == "cpu":  # CPU collectives for multi-process CPU runs
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        jax.distributed.initialize()
    elif len([h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
        jax.distributed.initialize()
    else:
        return False
    _initialized = True
    return True


def sync_processes(name: str) -> None:
    """Wait for every process at the barrier ``name`` (nothing to wait for with one process)."""
    import jax
    from jax.experimental import multihost_utils

    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
