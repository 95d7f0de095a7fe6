"""Tool-call arguments as a JSON object: the one rule for decoding them, shared by record
normalisation (``core.conversation``) and call parsing (``tools.calls``), so the base layer needs
nothing above it.
"""

from __future__ import annotations

import json
from typing import Any


def decode_arguments(arguments: Any) -> dict[str, Any]:
    """Arguments as a dict: a dict passes, a JSON string holding an object is decoded.

    ``None`` and ``""`` mean no arguments. Anything else raises ``ValueError`` with the reason.
    """
    if arguments is None or arguments == "":
        return {}
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except (ValueError, RecursionError) as e:
            raise ValueError(f"arguments string is not JSON ({e})") from None
    if not isinstance(arguments, dict):
        raise ValueError(f"arguments must be a JSON object, got {type(arguments).__name__}")
    return arguments
