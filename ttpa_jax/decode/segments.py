"""A batch decoded a segment at a time, for callers that act between steps (the server streams text
and answers each request as soon as its rows end, while the batch decodes on).

``SegmentedDecode`` prefills like ``decode.loop.generate`` (same bucketed, left-padded inputs, shared
conversations, per-row keys) and then ``advance(k)`` runs the same jitted while-loop for at most k
more steps, returning host copies of the tokens so far. Run to the end, its tokens equal
``generate``'s. The loop state stays on the device between segments; ``until`` is traced, so every
segment of a batch shape reuses one compiled program.

Shapes: U conversations, B rows, P prompt width, M new tokens, S = P + M.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from flax import nnx

from ttpa_jax.decode.loop import LoopSpec, _decode_loop, _prefilled, _spec, bucketed_inputs, row_keys
from ttpa_jax.decode.rules import GREEDY, Sampling
from ttpa_jax.decode.settings import DEFAULT_BUCKET


@functools.partial(jax.jit, static_argnames=("graphdef", "spec"))
def _prefill(graphdef, params, ids, mask, conv, lengths, spec: LoopSpec):
    """ids, mask [U, P]; conv, lengths [B] -> the loop state before the first step, kv_mask [B, S]."""
    return _prefilled(nnx.merge(graphdef, params), ids, mask, conv, lengths, spec)


@functools.partial(jax.jit, static_argnames=("graphdef", "spec"))
def _advance(graphdef, params, loop, kv_mask, lengths, keys, until, spec: LoopSpec):
    """The loop state after decoding until iteration ``until`` (or every row is done)."""
    P = kv_mask.shape[1] - spec.max_new_tokens
    return _decode_loop(nnx.merge(graphdef, params), loop, kv_mask, lengths, keys, P, spec, until)


class SegmentedDecode:
    """One batch, prefilled at construction; ``advance(k)`` decodes up to k more steps.

    Arguments as ``decode.loop.generate`` (``conv``/``lengths`` for shared prefills, ``key`` one key
    or one per row). ``finished`` turns true once every row has ended.
    """

    def __init__(self, model, prompt_ids, prompt_mask, *, max_new_tokens: int, sampling: Sampling = GREEDY,
                 key=None, eos_ids=None, stop_token_seqs=(), bucket: int = DEFAULT_BUCKET, conv=None, lengths=None):
        self._spec = _spec(model, max_new_tokens, sampling, eos_ids, stop_token_seqs, 2)
        ids, mask, conv, self._lengths = bucketed_inputs(prompt_ids, prompt_mask, conv, lengths, bucket,
                                                         self._spec.pad_id)
        self._keys = row_keys(key, len(conv))
        self._graphdef, self._params = nnx.split(model)
        self._loop, self._kv_mask = _prefill(self._graphdef, self._params, ids, mask, conv, self._lengths, self._spec)
        self._it = 0
        self.finished = False

    def advance(self, steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Decode up to ``steps`` more steps; host copies of tokens [B, M] (pad after a row's
        length), lengths [B] (tokens generated, the ending one included) and done [B]."""
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        self._it = min(self._it + steps, self._spec.max_new_tokens)
        self._loop = _advance(self._graphdef, self._params, self._loop, self._kv_mask, self._lengths, self._keys,
                              np.int32(self._it), self._spec)
        tokens, lengths, done = (np.asarray(a) for a in jax.device_get((self._loop.tokens, self._loop.step,
                                                                        self._loop.done)))
        self.finished = bool(done.all()) or self._it >= self._spec.max_new_tokens
        return tokens, lengths, done
