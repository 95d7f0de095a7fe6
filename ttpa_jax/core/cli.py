"""The one wrapper every stage's command line goes through: ``main(argv=None) -> int``.

``@stage_main`` turns a function ``(argv) -> int`` into the stage's ``main``: a ``UserError`` (or a
``FileNotFoundError`` / ``NotADirectoryError`` / ``IsADirectoryError`` about a path the user gave)
is printed as one line ``error: <message naming the file, line or field>`` on stderr and the exit code
is 2, with no traceback. Argument parsing is tyro's (it exits 2 on a bad flag, 0 on ``--help``).
A stage whose lower layers still raise a plain ``ValueError`` for a bad setting names it in
``user_errors``. ``run(main)`` is what ``__main__.py`` files and ``if __name__ == "__main__"`` call.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ttpa_jax.core.cache import use_compile_cache
from ttpa_jax.core.errors import UserError

PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError)
EXIT_USER_ERROR = 2
PATH_REASONS = {FileNotFoundError: "no such file or directory", NotADirectoryError: "not a directory",
                IsADirectoryError: "is a directory, not a file"}

Main = Callable[[Sequence[str] | None], int]


def one_line(text: str) -> str:
    """A message on one line: inner newlines become ``; ``."""
    return "; ".join(part.strip() for part in str(text).strip().splitlines() if part.strip())


def error_message(e: BaseException) -> str:
    """``<message>`` for a user error; ``<path>: <reason>`` for an OS error that carries its path."""
    if isinstance(e, OSError) and e.filename is not None and not isinstance(e, UserError):
        reason = next((r for cls, r in PATH_REASONS.items() if isinstance(e, cls)), e.strerror or str(e))
        return f"{e.filename}: {reason}"
    return one_line(str(e)) or type(e).__name__


def require_paths(*paths: str | os.PathLike) -> None:
    """Raise ``FileNotFoundError`` naming the first of ``paths`` that does not exist (checked before a
    stage starts loading, so that a library's own message about it never reaches the user)."""
    for path in paths:
        if not any(c in str(path) for c in "*?[") and not Path(path).exists():  # a glob is the reader's
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))


def stage_main(fn: Callable[[list[str] | None], int] | None = None, *,
               user_errors: tuple[type[BaseException], ...] = ()) -> Main | Callable[[Callable], Main]:
    """Decorator: ``fn(argv) -> int`` becomes ``main(argv=None) -> int`` with the error rule above."""

    def wrap(f: Callable[[list[str] | None], int]) -> Main:
        caught = (UserError, *PATH_ERRORS, *user_errors)

        @functools.wraps(f)
        def main(argv: Sequence[str] | None = None) -> int:
            try:
                return int(f(None if argv is None else list(argv)) or 0)
            except caught as e:
                print(f"error: {error_message(e)}", file=sys.stderr)
                return EXIT_USER_ERROR

        return main

    return wrap(fn) if fn is not None else wrap


def run(main: Main) -> None:
    """Exit the process with ``main()``'s code (what ``python -m ttpa_jax.<stage>`` runs); compiled programs
    are cached across processes (``core.cache``). The CPU allocator settings come with the model layer
    (``ttpa_jax.cpu``)."""
    use_compile_cache()
    sys.exit(main())
