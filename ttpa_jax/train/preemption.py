"""Stopping a run when the scheduler asks: SIGTERM (spot VMs, SLURM's signal before the kill) or
SIGINT (Ctrl-C).

``StopRequests`` is held for the whole loop. The signal only sets a flag; the step running when it
arrives finishes, and ``stop_at(step)`` then says the loop should save that step (data-iterator
state included) and end with ``Preempted``: one line saying where it stopped and how to continue,
exit code ``EXIT_PREEMPTED`` (75, ``EX_TEMPFAIL``: try again later), which a scheduler can tell
from an error (2) and from a finished run (0). A second signal while the step finishes ends the
process at once, as the signal would have without the handler.

Several processes (``jax.distributed`` initialised) must stop at the same step, or their saves would
wait for each other forever. There the distributed runtime receives the SIGTERM itself and runs
JAX's preemption sync protocol (``multihost_utils.reached_preemption_sync_point``: every process
learns of the notice and all agree on the step after the furthest one); SIGINT is handed to it as a
SIGTERM. ``stop_at`` must then be called at every step on every process.
"""

from __future__ import annotations

import os
import signal
import threading

EXIT_PREEMPTED = 75  # sysexits.h EX_TEMPFAIL
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(SystemExit):
    """The run saved its state and stopped on a signal; exits with ``EXIT_PREEMPTED``."""

    def __init__(self, message: str):
        super().__init__(EXIT_PREEMPTED)
        self.message = message


def _sync_manager():
    """JAX's preemption sync manager when this is one of several processes, else None."""
    import jax
    from jax._src import distributed

    if jax.process_count() == 1 or distributed.global_state.client is None:
        return None
    return distributed.global_state.preemption_sync_manager


class StopRequests:
    """Context manager: the signal handlers for one training loop, restored on exit."""

    def __init__(self):
        self.received: str | None = None
        self._previous: dict[int, object] = {}
        self._sync = None

    def __enter__(self) -> StopRequests:
        self._sync = _sync_manager()
        if threading.current_thread() is threading.main_thread():
            wanted = (signal.SIGINT,) if self._sync is not None else SIGNALS  # SIGTERM: the runtime's own
            for sig in wanted:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None:  # a second signal: stop now, as without the handler
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            os.kill(os.getpid(), signum)
            return
        self.received = signal.Signals(signum).name
        if self._sync is not None and signum != signal.SIGTERM:
            os.kill(os.getpid(), signal.SIGTERM)  # the distributed runtime's notice, seen by every process

    def stop_at(self, step: int) -> bool:
        """Whether the loop should save ``step`` and stop (the same answer on every process)."""
        if self._sync is not None:
            if self._sync.reached_sync_point(step):
                self.received = self.received or "SIGTERM"
                return True
            return False
        return self.received is not None

    def message(self, step: int, steps: int, saved_in) -> str:
        return (f"stopped by {self.received} after step {step} of {steps}: saved checkpoint {step} in {saved_in}; "
                f"rerun the same command to continue (exit code {EXIT_PREEMPTED})")
