"""From generated token ids to completion text: stop strings, EOS and special tokens.

Stop strings are handled twice. In the decode loop, a row ends when its last tokens equal the
stop string's own tokenization (``stop_token_sequences``): exact for strings that are single tokens,
like Qwen's ``</tool_call>``. On the host, ``truncate_at_stop`` finds the first stop string in the
decoded text and cuts both the text (right after the stop string) and the ids (after the token
that completes it), so output ends where the stop string ends whichever tokens spelled it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple


class Completion(NamedTuple):
    """A finished completion. finish_reason: ``eos``, ``stop`` (a stop string) or ``length``."""

    text: str
    token_ids: list[int]
    finish_reason: str


def stop_token_sequences(tokenizer, stops: Sequence[str]) -> tuple[tuple[int, ...], ...]:
    """Each stop string's token ids, as the decode loop checks them."""
    seqs = []
    for s in stops:
        if not s:
            raise ValueError("stop strings must be non-empty")
        seqs.append(tuple(tokenizer.encode(s, add_special_tokens=False)))
    return tuple(seqs)


def _first_stop_end(text: str, stops: Sequence[str]) -> int | None:
    """Character index just past the earliest-ending stop string in ``text``, or None."""
    ends = [i + len(s) for s in stops if (i := text.find(s)) >= 0]
    return min(ends) if ends else None


def decode_text(tokenizer, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=True)


def truncate_at_stop(tokenizer, ids: Sequence[int], stops: Sequence[str]) -> tuple[list[int], str, bool]:
    """``(ids, text, stopped)``: ids up to the token that completes the first stop string, and the
    text cut right after it. Without a stop string in the text, everything is kept."""
    ids = list(ids)
    text = decode_text(tokenizer, ids)
    end = _first_stop_end(text, stops) if stops else None
    if end is None:
        return ids, text, False
    lo, hi = 1, len(ids)  # smallest n whose decoded prefix holds a stop string
    while lo < hi:
        mid = (lo + hi) // 2
        if _first_stop_end(decode_text(tokenizer, ids[:mid]), stops) is None:
            lo = mid + 1
        else:
            hi = mid
    prefix = decode_text(tokenizer, ids[:lo])
    return ids[:lo], prefix[: _first_stop_end(prefix, stops)], True


def finish(tokenizer, ids: Sequence[int], eos_ids: Sequence[int], stops: Sequence[str]) -> Completion:
    """The completion for the generated ``ids`` of one row (as long as the decode loop made it)."""
    kept, text, stopped = truncate_at_stop(tokenizer, ids, stops)
    if stopped:
        return Completion(text, kept, "stop")
    reason = "eos" if kept and kept[-1] in set(eos_ids) else "length"
    return Completion(text, kept, reason)
