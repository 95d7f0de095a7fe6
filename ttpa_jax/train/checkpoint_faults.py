"""What a checkpoint's read or write failure says, in one line, and orbax's echoes of it silenced.

A failing orbax save or restore raises one exception in the caller, but orbax's worker threads also
log it (absl ``ERROR ... _SignalingThread.run() raised an exception`` with a traceback), asyncio
logs the tasks and futures it left behind (``... exception was never retrieved``) and tensorstore's late
callbacks meet a closed event loop (``RuntimeError: Event loop is closed``, unraisable): hundreds of
lines for one full disk. ``quiet_orbax()`` drops exactly those echoes (the exception itself still
reaches the caller, who reports it once); ``reason(e)`` is that report's cause: the OS error
(``No space left on device``) or the storage layer's status line, without its spec dump.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback

# asyncio says "Task", "Future" or "_GatheringFuture exception was never retrieved"
ECHOES = {"absl": "_SignalingThread.run() raised an exception", "asyncio": "exception was never retrieved"}
# orbax 0.12's messages for a checkpoint that reads but does not fit the run's state (another LoRA
# rank, method or model): a user error, not damage.
MISMATCH = ("tree structures do not match", "is not compatible with the stored shape")
STATUS = re.compile(r"\b([A-Z][A-Z_]{3,}): (.*)")
_installed = False


class _DropEchoes(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if self.text not in msg:
            return True
        if record.name != "asyncio":
            return False
        trace = "".join(traceback.format_exception(*record.exc_info)) if record.exc_info else ""
        return not any(mark in msg + trace for mark in ("orbax", "OCDBT", "tensorstore"))  # only orbax's leftovers


def quiet_orbax() -> None:
    """Install the filters (once per process); they drop only orbax's echoes of an exception."""
    global _installed
    if _installed:
        return
    _installed = True
    for name, text in ECHOES.items():
        logging.getLogger(name).addFilter(_DropEchoes(text))
    previous = sys.unraisablehook

    def hook(u) -> None:
        if isinstance(u.exc_value, RuntimeError) and str(u.exc_value) == "Event loop is closed":
            return
        previous(u)

    sys.unraisablehook = hook


def _chain(e: BaseException):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def reason(e: BaseException, limit: int = 240) -> str:
    """One line saying why: an OS error's text, else the storage layer's status (``OUT_OF_RANGE:
    ...``) without the bracketed specs, else the message's first line."""
    for x in _chain(e):
        if isinstance(x, OSError) and x.strerror:
            return x.strerror
        code = re.search(r"os_error_code='?(\d+)", str(x))
        if code:
            return os.strerror(int(code.group(1)))
    for x in _chain(e):
        m = STATUS.search(str(x))
        if m:
            text = f"{m.group(1)}: {m.group(2)}"
            break
    else:
        text = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
    text = re.sub(r"\s*\[[a-z_ ]+=.*$", "", text).strip()  # the trailing [tensorstore_spec=...] dumps
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_mismatch(e: BaseException) -> bool:
    """Whether a restore failed because the checkpoint does not fit the run (not because it is damaged)."""
    return any(m in str(x) for x in _chain(e) for m in MISMATCH)
