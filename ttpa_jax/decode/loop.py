"""Batched autoregressive decoding over a preallocated KV cache.

One jitted function prefills a left-padded batch of prompts and runs a ``lax.while_loop`` decode
(rows whose prompts are prefixes of one conversation share its prefill: ``generate(conv=, lengths=)``);
a second continues decoding from an existing cache (token-level branches: rows copied out of the
cache, each forced to an alternative token at its own step and decoded on from there).

Cache layout: ``S = P + M`` columns per row, P the (bucketed) prompt width, M ``max_new_tokens``.
The prompt occupies columns ``[0, P)`` (left padded; a shared conversation's columns after a row's
prompt are masked out of that row), generated step ``i`` is written at column
``P + i`` with position ``prompt_len + i``, so a row's write column is ``P + step[b]``: rows at
different steps decode together in one loop. Finished rows write to column S, which is dropped.

Every step records, for the whole batch, the top-``record_k`` probabilities and token ids of the
model's distribution (softmax of the raw logits, before temperature or truncation).

Under a mesh (``jax.set_mesh``, parameters placed by ``sharding``) the prompts, the cache and the
loop state are laid out explicitly: rows over the batch axes, KV heads and vocabulary over ``tensor``.

Shapes (the package legend, docs/architecture.md): B batch, U conversations of a shared prefill, R forked rows, P prompt width, M new tokens,
S = P + M cache columns, V vocab, C recorded top-k candidates per step; K and H as in the model.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ttpa_jax.decode.rules import GREEDY, Sampling, choose_tokens
from ttpa_jax.decode.settings import DEFAULT_BUCKET
from ttpa_jax.model.sharding import shard_activation
from ttpa_jax.model.transformer import CacheSlot, LayerCache, Visibility, positions_from_mask


@dataclasses.dataclass(frozen=True)
class LoopSpec:
    """Static settings of one compiled decode loop (a new value compiles a new loop)."""

    max_new_tokens: int
    sampling: Sampling = GREEDY
    eos_ids: tuple[int, ...] = ()
    stop_seqs: tuple[tuple[int, ...], ...] = ()  # token-id sequences that end a row
    record_k: int = 2
    pad_id: int = 0


class DecodeState(NamedTuple):
    """What a continuation needs from a finished decode (device arrays)."""

    cache: list  # per layer LayerCache(k, v), each [B, S, K, H]
    kv_mask: jax.Array  # [B, S] bool
    prompt_lengths: jax.Array  # [B] int32 real prompt tokens
    keys: jax.Array  # [B] per-row PRNG keys


@dataclasses.dataclass
class DecodeResult:
    """Host (numpy) outputs. Positions past ``lengths[b]`` hold ``pad_id`` / zeros.

    tokens [B, M] generated ids (the EOS or stop sequence that ended a row included);
    lengths [B]; top_probs / top_ids [B, M, C] the model's top-C at each step.
    """

    tokens: np.ndarray
    lengths: np.ndarray
    top_probs: np.ndarray
    top_ids: np.ndarray
    state: DecodeState | None = None

    def sequences(self) -> list[list[int]]:
        return [self.tokens[b, : self.lengths[b]].tolist() for b in range(len(self.lengths))]


class _Loop(NamedTuple):
    it: jax.Array  # [] iterations run
    step: jax.Array  # [B] step whose token is chosen next
    done: jax.Array  # [B] bool
    logits: jax.Array  # [B, V] float32 distribution for ``step``
    forced: jax.Array  # [B] token forced at ``step`` (-1: choose)
    cache: list
    tokens: jax.Array  # [B, M]
    top_probs: jax.Array  # [B, M, C]
    top_ids: jax.Array  # [B, M, C]


def _on_mesh(loop: _Loop) -> _Loop:
    """The loop state laid out on the mesh in context (a no-op without one): rows over the batch axes,
    the cache's KV heads and the logits' vocabulary over ``tensor`` (``sharding.RULES``)."""
    def rows(x):
        return shard_activation(x, ("batch",) + (None,) * (x.ndim - 1))

    cache = [LayerCache(*(shard_activation(a, ("batch", "seq", "act_kv_heads", None)) for a in c))
             for c in loop.cache]
    return loop._replace(
        step=rows(loop.step), done=rows(loop.done), forced=rows(loop.forced), cache=cache,
        logits=shard_activation(loop.logits, ("batch", "act_vocab")),
        tokens=rows(loop.tokens), top_probs=rows(loop.top_probs), top_ids=rows(loop.top_ids),
    )


def round_up(n: int, multiple: int) -> int:
    return max(multiple, -(-n // multiple) * multiple)


def prompt_bucket(width: int, bucket: int = DEFAULT_BUCKET) -> int:
    """Padded prompt width: a multiple of ``bucket``, coarser for long prompts (a multiple of an
    eighth of the next power of two), so a data set of varied lengths compiles at most 4 loops per
    doubling of length (a compile costs as much as prefilling several batches on a CPU) and a long
    prompt is padded by less than a quarter."""
    step = max(bucket, (1 << max(0, (width - 1).bit_length())) // 8)
    return round_up(width, step)


def stop_hits(tokens, step, stop_seqs) -> jax.Array:
    """[B] bool: the tokens ending at column ``step[b]`` of ``tokens [B, M]`` equal a stop sequence."""
    hit = jnp.zeros(step.shape, bool)
    for seq in stop_seqs:
        L = len(seq)
        idx = step[:, None] - (L - 1) + jnp.arange(L)[None, :]  # [B, L]
        window = jnp.take_along_axis(tokens, jnp.clip(idx, 0, tokens.shape[1] - 1), axis=1)
        hit = hit | ((step + 1 >= L) & jnp.all(window == jnp.asarray(seq, tokens.dtype), axis=1))
    return hit


def _decode_loop(model, init: _Loop, kv_mask, prompt_lengths, keys, P: int, spec: LoopSpec, until=None) -> _Loop:
    """Decode steps until every row is done, ``M`` iterations ran, or (``until``, traced) that many."""
    B, S = kv_mask.shape
    M = spec.max_new_tokens
    rows = jnp.arange(B)
    eos = jnp.asarray(spec.eos_ids or (-1,), jnp.int32)
    until = M if until is None else until

    def cond(c: _Loop):
        return (c.it < M) & (c.it < until) & ~jnp.all(c.done)

    def body(c: _Loop) -> _Loop:
        active = ~c.done
        chosen = choose_tokens(c.logits, keys, c.step, spec.sampling)
        tok = jnp.where(c.forced >= 0, c.forced, chosen).astype(jnp.int32)  # [B]
        tokens = c.tokens.at[rows, jnp.where(active, c.step, M)].set(tok, mode="drop")
        probs = jax.nn.softmax(c.logits, axis=-1)
        top_p, top_i = jax.lax.top_k(probs, spec.record_k)  # [B, C]
        rec_col = jnp.where(active & (c.forced < 0), c.step, M)
        top_probs = c.top_probs.at[rows, rec_col].set(top_p, mode="drop")
        top_ids = c.top_ids.at[rows, rec_col].set(top_i.astype(jnp.int32), mode="drop")
        ended = jnp.isin(tok, eos) | stop_hits(tokens, c.step, spec.stop_seqs) | (c.step + 1 >= M)
        done = c.done | (active & ended)
        write = jnp.where(done, S, P + c.step).astype(jnp.int32)  # finished rows write nowhere
        pos = (prompt_lengths + c.step)[:, None]
        h, cache = model.hidden_states(tok[:, None], Visibility(pos, kv_mask, slot=CacheSlot(c.cache, write)))
        return _on_mesh(_Loop(
            it=c.it + 1, step=jnp.where(active, c.step + 1, c.step), done=done,
            logits=model.logits(h[:, 0]), forced=jnp.full_like(c.forced, -1), cache=cache,
            tokens=tokens, top_probs=top_probs, top_ids=top_ids,
        ))

    return jax.lax.while_loop(cond, body, _on_mesh(init))


@functools.partial(jax.jit, static_argnames=("graphdef", "spec"))
def _prefill_and_decode(graphdef, params, conv_ids, conv_mask, row_conv, row_lengths, keys, spec: LoopSpec):
    """conv_ids, conv_mask [U, P] (left padded conversations), row_conv [B], row_lengths [B] (row b's
    prompt: the first row_lengths[b] tokens of conversation row_conv[b]) -> final _Loop, kv_mask,
    prompt lengths. The U conversations are prefilled once; each row takes its conversation's cache
    with the columns after its prompt masked, and its first logits from its prompt's last column."""
    model = nnx.merge(graphdef, params)
    init, kv_mask = _prefilled(model, conv_ids, conv_mask, row_conv, row_lengths, spec)
    out = _decode_loop(model, init, kv_mask, row_lengths, keys, conv_ids.shape[1], spec)
    return out, kv_mask, row_lengths


def _prefilled(model, conv_ids, conv_mask, row_conv, row_lengths, spec: LoopSpec) -> tuple[_Loop, jax.Array]:
    """The loop state before the first decode step, and kv_mask [B, S] (see ``_prefill_and_decode``)."""
    cfg = model.config
    conv_ids, conv_mask = (shard_activation(a, ("batch", "seq")) for a in (conv_ids, conv_mask))
    U, P = conv_ids.shape
    B = row_conv.shape[0]
    M = spec.max_new_tokens
    S = P + M
    shape = (U, S, cfg.num_key_value_heads, cfg.head_dim)
    cache = [LayerCache(jnp.zeros(shape, model.dtype), jnp.zeros(shape, model.dtype))
             for _ in range(cfg.num_hidden_layers)]
    conv_kv = jnp.concatenate([conv_mask.astype(bool), jnp.ones((U, M), bool)], axis=1)  # [U, S]
    view = Visibility(positions_from_mask(conv_mask), conv_kv, slot=CacheSlot(cache, jnp.zeros((U,), jnp.int32)))
    h, cache = model.hidden_states(conv_ids, view)  # h [U, P, D]
    start = P - conv_mask.astype(jnp.int32).sum(axis=1)[row_conv]  # [B] first real column
    cols = jnp.arange(S)[None, :]
    kv_mask = ((cols >= start[:, None]) & (cols < (start + row_lengths)[:, None])) | (cols >= P)  # [B, S]
    cache = [LayerCache(jnp.take(c.k, row_conv, axis=0), jnp.take(c.v, row_conv, axis=0)) for c in cache]
    last = h[row_conv, start + row_lengths - 1]  # [B, D]
    init = _Loop(
        it=jnp.int32(0), step=jnp.zeros((B,), jnp.int32), done=jnp.zeros((B,), bool),
        logits=model.logits(last), forced=jnp.full((B,), -1, jnp.int32), cache=cache,
        tokens=jnp.full((B, M), spec.pad_id, jnp.int32),
        top_probs=jnp.zeros((B, M, spec.record_k), jnp.float32),
        top_ids=jnp.zeros((B, M, spec.record_k), jnp.int32),
    )
    return init, kv_mask


@functools.partial(jax.jit, static_argnames=("graphdef", "spec"))
def _fork_and_decode(graphdef, params, state: DecodeState, tokens, top_probs, top_ids,
                     rows, steps, forced, live, spec: LoopSpec):
    """Copy cache rows ``rows [R]`` and decode each from ``steps [R]`` with ``forced [R]`` first.

    tokens [B, M], top_probs / top_ids [B, M, C] are the source rows' outputs: columns before the
    branch step are kept (the shared prefix); the branch step keeps its recorded distribution.
    """
    model = nnx.merge(graphdef, params)
    M = spec.max_new_tokens
    S = state.kv_mask.shape[1]
    P = S - M
    cache = [LayerCache(jnp.take(c.k, rows, axis=0), jnp.take(c.v, rows, axis=0)) for c in state.cache]
    cols = jnp.arange(M)[None, :]
    prefix = cols < steps[:, None]  # [R, M]
    keep_dist = (cols <= steps[:, None])[..., None]
    init = _Loop(
        it=jnp.int32(0), step=steps.astype(jnp.int32), done=~live,
        logits=jnp.zeros((rows.shape[0], model.config.vocab_size), jnp.float32),
        forced=forced.astype(jnp.int32), cache=cache,
        tokens=jnp.where(prefix, tokens[rows], spec.pad_id),
        top_probs=jnp.where(keep_dist, top_probs[rows], 0.0),
        top_ids=jnp.where(keep_dist, top_ids[rows], 0),
    )
    out = _decode_loop(model, init, state.kv_mask[rows], state.prompt_lengths[rows], state.keys[rows], P, spec)
    return out


def _spec(model, max_new_tokens, sampling, eos_ids, stop_token_seqs, record_k) -> LoopSpec:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if record_k < 2:
        raise ValueError(f"record_k must be at least 2, got {record_k}")
    cfg = model.config
    eos = tuple(sorted(set(cfg.eos_token_ids if eos_ids is None else eos_ids)))
    stops = tuple(tuple(int(t) for t in s) for s in stop_token_seqs if len(s))
    return LoopSpec(max_new_tokens=int(max_new_tokens), sampling=sampling, eos_ids=eos, stop_seqs=stops,
                    record_k=int(record_k), pad_id=cfg.pad_id)


def _result(out: _Loop, state: DecodeState | None) -> DecodeResult:
    tokens, lengths, probs, ids = jax.device_get((out.tokens, out.step, out.top_probs, out.top_ids))
    return DecodeResult(np.asarray(tokens), np.asarray(lengths), np.asarray(probs), np.asarray(ids), state)


def row_keys(key, batch: int) -> jax.Array:
    """One PRNG key per row [B]: ``key`` split over the rows, or ``key`` itself when it already holds
    ``batch`` keys. ``None`` is a fixed key (greedy decoding draws nothing)."""
    key = jax.random.key(0) if key is None else jnp.asarray(key)
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)  # a raw uint32 key (jax.random.PRNGKey)
    return key if key.shape == (batch,) else jax.random.split(key, batch)


def generate(model, prompt_ids, prompt_mask, *, max_new_tokens: int, sampling: Sampling = GREEDY,
             key: jax.Array | None = None, eos_ids=None, stop_token_seqs=(), record_k: int = 2,
             bucket: int = DEFAULT_BUCKET, keep_cache: bool = False, conv=None, lengths=None) -> DecodeResult:
    """Decode a batch of left-padded prompts ``prompt_ids, prompt_mask [B, T]``.

    The prompt width is left-padded to a bucket (``prompt_bucket``: a multiple of ``bucket``) so
    that prompts of varied length share one compiled loop. Rows end at an ``eos_ids`` token (default: the config's), after a
    ``stop_token_seqs`` sequence, or after ``max_new_tokens``. ``key`` seeds sampling: one key split
    over the rows, or ``[B]`` keys, one per row (a row's draws depend only on its key and step). ``keep_cache`` returns the cache in ``.state``
    for ``continue_decoding``.

    Shared prefills (``decode.batching.PromptBatch``): with ``conv [B']`` and ``lengths [B']`` the
    arguments are U = B conversations and row b decodes after the first ``lengths[b]`` tokens of
    conversation ``conv[b]``; the result has B' rows (``key``: B' keys or one).
    """
    spec = _spec(model, max_new_tokens, sampling, eos_ids, stop_token_seqs, record_k)
    ids, mask, conv, lengths = bucketed_inputs(prompt_ids, prompt_mask, conv, lengths, bucket, spec.pad_id)
    keys = row_keys(key, len(conv))
    graphdef, params = nnx.split(model)
    out, kv_mask, plen = _prefill_and_decode(graphdef, params, ids, mask, conv, lengths, keys, spec)
    return _result(out, DecodeState(out.cache, kv_mask, plen, keys) if keep_cache else None)


def bucketed_inputs(prompt_ids, prompt_mask, conv, lengths, bucket: int, pad_id: int):
    """``generate``'s arguments checked and left padded to the bucketed width P: device arrays
    ids, mask [U, P], conv [B], lengths [B]."""
    prompt_ids = np.asarray(prompt_ids, np.int32)
    prompt_mask = np.asarray(prompt_mask).astype(bool)
    U, T = prompt_ids.shape
    if not prompt_mask[:, -1].all():
        raise ValueError("prompts must be left padded: the last column of prompt_mask must be all true")
    if conv is None:
        conv, lengths = np.arange(U), prompt_mask.sum(axis=1)
    conv, lengths = np.asarray(conv, np.int32), np.asarray(lengths, np.int32)
    if np.any(lengths < 1) or np.any(lengths > prompt_mask.sum(axis=1)[conv]):
        raise ValueError("each row's prompt length must be between 1 and its conversation's length")
    P = prompt_bucket(T, bucket)
    ids = np.full((U, P), pad_id, np.int32)
    mask = np.zeros((U, P), bool)
    ids[:, P - T:], mask[:, P - T:] = prompt_ids, prompt_mask
    return jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(conv), jnp.asarray(lengths)


def continue_decoding(model, base: DecodeResult, rows, steps, forced_tokens, *, sampling: Sampling = GREEDY,
                      eos_ids=None, stop_token_seqs=(), pad_rows_to: int | None = None) -> DecodeResult:
    """Branch from a decode kept with ``keep_cache=True``: row r copies ``base`` row ``rows[r]``
    (its cache and its tokens before ``steps[r]``), takes ``forced_tokens[r]`` at step ``steps[r]``
    and decodes on with ``sampling``. No prompt is re-read: the cache rows are copied.

    All branches decode together; ``pad_rows_to`` pads the branch count with idle rows so that
    varied counts share one compiled loop. Returns R rows (tokens include the shared prefix).
    """
    if base.state is None:
        raise ValueError("continue_decoding needs a DecodeResult made with keep_cache=True")
    rows = np.asarray(rows, np.int32)
    steps = np.asarray(steps, np.int32)
    forced = np.asarray(forced_tokens, np.int32)
    R = len(rows)
    M, C = base.tokens.shape[1], base.top_ids.shape[2]
    if R == 0:
        return DecodeResult(np.zeros((0, M), np.int32), np.zeros((0,), np.int32),
                            np.zeros((0, M, C), np.float32), np.zeros((0, M, C), np.int32))
    if np.any(steps < 0) or np.any(steps >= base.lengths[rows]):
        raise ValueError("branch steps must lie within the decoded length of their row (0 <= step < length)")
    width = max(R, pad_rows_to or R)
    live = np.arange(width) < R
    pad = width - R
    rows, steps, forced = (np.concatenate([a, np.zeros(pad, np.int32)]) for a in (rows, steps, forced))
    spec = _spec(model, M, sampling, eos_ids, stop_token_seqs, C)
    graphdef, params = nnx.split(model)
    out = _fork_and_decode(graphdef, params, base.state, jnp.asarray(base.tokens), jnp.asarray(base.top_probs),
                           jnp.asarray(base.top_ids), jnp.asarray(rows), jnp.asarray(steps), jnp.asarray(forced),
                           jnp.asarray(live), spec)
    res = _result(out, None)
    return DecodeResult(res.tokens[:R], res.lengths[:R], res.top_probs[:R], res.top_ids[:R])


__all__ = ["generate", "continue_decoding", "DecodeResult", "DecodeState", "Sampling", "GREEDY", "prompt_bucket",
           "stop_hits", "LoopSpec"]
