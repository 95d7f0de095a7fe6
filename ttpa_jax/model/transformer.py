"""One Flax NNX decoder for Qwen2/Qwen2.5 and Llama 3.x.

Module and attribute names mirror the Hugging Face checkpoints (``embed_tokens``,
``layers[i].self_attn.q_proj``, ``mlp.gate_proj``, ``input_layernorm``, ...) and linear weights keep
HF's ``[out, in]`` layout, so loading and exporting are a rename, never a transpose. Every parameter
carries logical axis names (``axes`` metadata) that the sharding rules map onto a device mesh.

Shapes (the package legend, docs/architecture.md): B batch, T query length, S key length (cache
length), D hidden, N query heads, K key/value heads, G = N // K heads per group, H head dim, F MLP
width, V vocabulary, r LoRA rank.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ttpa_jax.model.attention import DEFAULT_BLOCK, NEG_INF, attend, attention_mask, even_chunks  # noqa: F401
from ttpa_jax.model.config import ModelConfig, load_config
from ttpa_jax.model.sharding import shard_activation


@dataclasses.dataclass(frozen=True)
class Ctx:
    """Per-call switches threaded through the layers.

    lora: apply LoRA adapters (False gives the frozen base model, the DPO reference).
    dropout_key: PRNG key for LoRA dropout during training; None disables dropout.
    """

    lora: bool = True
    dropout_key: jax.Array | None = None


class LayerCache(NamedTuple):
    k: jax.Array  # [B, S, K, H]
    v: jax.Array  # [B, S, K, H]


def _pytree(cls):
    """A frozen dataclass registered as a pytree whose fields are all leaves (``None``: absent)."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    return jax.tree_util.register_dataclass(cls, data_fields=[f.name for f in dataclasses.fields(cls)],
                                            meta_fields=[])


@_pytree
class CacheSlot:
    """Where a call's keys and values go: a decode cache and the column each row writes from."""

    cache: Any  # per layer LayerCache(k, v), each [B, S, K, H]
    write_index: Any  # [B] int32: row b's token t is written at column write_index[b] + t (S: dropped)


@_pytree
class Visibility:
    """Where the T tokens of one ``Transformer.hidden_states`` call sit and which keys each one sees.

    A query at column ``q = write_index[b] + t`` (``slot``; ``q = t`` without one) sees key column
    ``s <= q`` where ``kv_mask`` is set; ``segment_ids`` and ``branch_ids`` narrow that further
    (``attention.attention_mask``). Those two and ``columns`` describe whole rows: they take no
    ``slot`` (a ``ValueError`` here).
    """

    positions: Any  # [B, T] int32 rotary positions
    kv_mask: Any  # [B, S] which key columns are real tokens (S = T without a slot, else the cache length)
    segment_ids: Any = None  # [B, T] packed records: a query sees its own record's keys only
    branch_ids: Any = None  # [B, T] shared-prefix rows: 0 the trunk, else a branch (sees trunk and own)
    columns: Any = None  # [B, C] the last layer's queries, attention output and MLP at these columns only
    slot: CacheSlot | None = None  # decoding: read and write this cache

    def __post_init__(self):
        if self.slot is not None:
            whole_row = [n for n in ("segment_ids", "branch_ids", "columns") if getattr(self, n) is not None]
            if whole_row:
                raise ValueError(f"Visibility: {' / '.join(whole_row)} describe whole rows and take no cache slot")


# --------------------------------------------------------------------------- layers
class Linear(nnx.Module):
    """``y = x W^T + b`` with W stored ``[out, in]``, plus optional LoRA ``(x A^T) B^T * alpha / r``.

    LoRA adapters are ``nnx.LoRAParam`` (A ``[r, in]``, B ``[out, r]``, PEFT's layout), attached by
    ``ttpa_jax.model.lora.apply_lora``; B starts at zero so an untrained adapter changes nothing.
    """

    def __init__(self, d_in, d_out, *, axes, bias, cfg_dtype, param_dtype, uid, rngs, init_std=0.02):
        self.weight = nnx.Param(
            (init_std * jax.random.normal(rngs.params(), (d_out, d_in), jnp.float32)).astype(param_dtype),
            axes=axes,
        )
        self.bias = nnx.Param(jnp.zeros((d_out,), param_dtype), axes=(axes[0],)) if bias else nnx.data(None)
        self.lora_a = nnx.data(None)
        self.lora_b = nnx.data(None)
        self.lora_scale = 0.0
        self.lora_dropout = 0.0
        self.dtype = cfg_dtype
        self.uid = uid  # distinguishes dropout streams

    def __call__(self, x, ctx: Ctx):
        # Matmuls on [B*T, in] rows: with [B, T, in] inputs XLA on CPU transposes each adapted
        # projection's output gradient before computing the adapter gradients.
        lead = x.shape[:-1]
        x = x.astype(self.dtype).reshape(-1, x.shape[-1])  # [B*T, in]
        y = x @ self.weight[...].astype(self.dtype).T  # [B*T, out]
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        if ctx.lora and self.lora_a is not None:
            xa = x
            if self.lora_dropout > 0 and ctx.dropout_key is not None:
                keep = jax.random.bernoulli(
                    jax.random.fold_in(ctx.dropout_key, self.uid), 1.0 - self.lora_dropout, x.shape
                )
                xa = jnp.where(keep, x / (1.0 - self.lora_dropout), 0).astype(self.dtype)
            h = xa @ self.lora_a[...].astype(self.dtype).T  # [B*T, r]
            y = y + self.lora_scale * lora_up(h, self.lora_b[...].astype(self.dtype))
        return y.reshape(*lead, -1)


@jax.custom_vjp
def lora_up(h, b):
    """``h b^T``: h [M, r] adapter activations, b [out, r] the adapter's B -> [M, out].

    Autodiff's gradient of b, ``[out, r]`` from ``ct [M, out]`` and h, makes XLA:CPU transpose the large
    ``ct`` before its dot; the backward here computes the ``[r, out]`` product (``ct`` read in place) and
    transposes that small result, behind a barrier that keeps XLA from folding it back (LoRA's backward
    per projection 2-4x faster at 3072 rows, docs/benchmarks.md)."""
    return h @ b.T


def _lora_up_fwd(h, b):
    return h @ b.T, (h, b)


def _lora_up_bwd(res, ct):  # ct [M, out]
    h, b = res
    db_t = jnp.einsum("mr,mo->ro", h, ct)  # [r, out]
    return ct @ b, jax.lax.optimization_barrier(db_t).T


lora_up.defvjp(_lora_up_fwd, _lora_up_bwd)


class RMSNorm(nnx.Module):
    def __init__(self, dim, eps, param_dtype):
        self.weight = nnx.Param(jnp.ones((dim,), param_dtype), axes=("norm",))
        self.eps = eps

    def __call__(self, x):  # x [..., D] -> same dtype
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(x.dtype) * xf.astype(x.dtype)


class Embed(nnx.Module):
    def __init__(self, vocab, dim, param_dtype, rngs, init_std=0.02):
        self.weight = nnx.Param(
            (init_std * jax.random.normal(rngs.params(), (vocab, dim), jnp.float32)).astype(param_dtype),
            axes=("vocab", "embed"),
        )

    def __call__(self, ids, dtype):  # [B, T] -> [B, T, D]
        return jnp.take(self.weight[...], ids, axis=0).astype(dtype)


def rotary(positions, inv_freq, length, dtype):
    """The rotary embedding's cos and sin, ``[B, T, 1, H]`` each, for positions [B, T] below ``length``,
    looked up in ``[length, H/2]`` tables built on the host (angles in float32 as HF computes them):
    computed in the graph, XLA recomputes them inside every fusion that reads them (every layer and head)."""
    angles = (np.arange(length, dtype=np.float32)[:, None] * np.asarray(inv_freq, np.float32)).astype(np.float64)
    halves = [jnp.asarray(f(angles), dtype)[positions] for f in (np.cos, np.sin)]  # [B, T, H/2] each
    return tuple(jnp.concatenate([h, h], axis=-1)[:, :, None, :] for h in halves)


def rope(x, rot):
    """Rotary embedding (HF's rotate-half convention). x [B, T, n, H]; rot: ``rotary``'s (cos, sin)."""
    cos, sin = rot
    x1, x2 = jnp.split(x, 2, axis=-1)
    return x * cos + jnp.concatenate([-x2, x1], axis=-1) * sin


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, dtype, param_dtype, layer, rngs):
        D, N, K, H = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        kw = dict(cfg_dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        uid = layer * 16
        self.q_proj = Linear(D, N * H, axes=("q_heads", "embed"), bias=cfg.qkv_bias, uid=uid + 0, **kw)
        self.k_proj = Linear(D, K * H, axes=("kv_heads", "embed"), bias=cfg.qkv_bias, uid=uid + 1, **kw)
        self.v_proj = Linear(D, K * H, axes=("kv_heads", "embed"), bias=cfg.qkv_bias, uid=uid + 2, **kw)
        self.o_proj = Linear(N * H, D, axes=("embed", "q_heads"), bias=cfg.o_bias, uid=uid + 3, **kw)
        self.n_heads, self.n_kv, self.head_dim = N, K, H
        self.block = DEFAULT_BLOCK  # query rows per attention block (<= 0: dense scores)

    def __call__(self, x, rot, mask, ctx, cache: LayerCache | None, write_index, queries=None):
        """x [B, T, D]; rot: ``rotary`` at x's positions; mask [B, T, S] bool; cache rows are written at
        ``write_index[b] + t``. ``queries`` [B, C] (no cache): keys and values from every column, queries
        and output only at these columns -> [B, C, D]."""
        B, T, _ = x.shape
        N, K, H = self.n_heads, self.n_kv, self.head_dim
        xq, q_rot = x, rot
        if queries is not None:
            xq, q_rot = _columns(x, queries), tuple(_columns(r, queries) for r in rot)
            mask = _columns(mask, queries)
        q = rope(self.q_proj(xq, ctx).reshape(B, xq.shape[1], N, H), q_rot)
        k = rope(self.k_proj(x, ctx).reshape(B, T, K, H), rot)
        v = self.v_proj(x, ctx).reshape(B, T, K, H)
        q = shard_activation(q, ("batch", "seq", "act_heads", None))
        k = shard_activation(k, ("batch", "seq", "act_kv_heads", None))
        v = shard_activation(v, ("batch", "seq", "act_kv_heads", None))
        if cache is not None:
            cols = write_index[:, None] + jnp.arange(T)[None, :]  # [B, T]
            rows = jnp.broadcast_to(jnp.arange(B)[:, None], (B, T))
            k_all = cache.k.at[rows, cols].set(k.astype(cache.k.dtype), mode="drop")
            v_all = cache.v.at[rows, cols].set(v.astype(cache.v.dtype), mode="drop")
            new_cache = LayerCache(k_all, v_all)
            k, v = k_all.astype(x.dtype), v_all.astype(x.dtype)
        else:
            new_cache = None
        S = k.shape[1]
        out = attend(q, k, v, mask[:, :, :S], block=self.block)
        return self.o_proj(out, ctx), new_cache


def _columns(x, cols):
    """x [B, T, ...] at the columns cols [B, C] -> [B, C, ...]."""
    return jnp.take_along_axis(x, cols.reshape(*cols.shape, *(1,) * (x.ndim - 2)), axis=1)


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, dtype, param_dtype, layer, rngs):
        D, F = cfg.hidden_size, cfg.intermediate_size
        kw = dict(cfg_dtype=dtype, param_dtype=param_dtype, rngs=rngs, bias=cfg.mlp_bias)
        uid = layer * 16
        self.gate_proj = Linear(D, F, axes=("mlp", "embed"), uid=uid + 4, **kw)
        self.up_proj = Linear(D, F, axes=("mlp", "embed"), uid=uid + 5, **kw)
        self.down_proj = Linear(F, D, axes=("embed", "mlp"), uid=uid + 6, **kw)

    def __call__(self, x, ctx):
        h = jax.nn.silu(self.gate_proj(x, ctx)) * self.up_proj(x, ctx)  # [B, T, F]
        return self.down_proj(shard_activation(h, ("batch", "seq", "act_mlp")), ctx)


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, dtype, param_dtype, layer, rngs):
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype)
        self.self_attn = Attention(cfg, dtype, param_dtype, layer, rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype)
        self.mlp = MLP(cfg, dtype, param_dtype, layer, rngs)

    def __call__(self, x, rot, mask, ctx, cache, write_index, queries=None):
        """x [B, T, D] -> [B, T, D] and the updated cache; with ``queries`` [B, C], [B, C, D]: the
        layer's output at those columns only (``Attention``)."""
        h, new_cache = self.self_attn(self.input_layernorm(x), rot, mask, ctx, cache, write_index, queries)
        x = (x if queries is None else _columns(x, queries)) + h
        x = x + self.mlp(self.post_attention_layernorm(x), ctx)
        return shard_activation(x, ("batch", "seq", "act_embed")), new_cache


# --------------------------------------------------------------------------- model
class Transformer(nnx.Module):
    """Decoder-only LM. ``model(input_ids, attention_mask)`` -> float32 logits ``[B, T, V]``; ``hidden_states``
    and ``logits`` for callers that score only some positions (``train.scoring``)."""

    def __init__(self, cfg: ModelConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, remat=False, rngs):
        self.config = cfg
        self.dtype = jnp.dtype(dtype)
        self.param_dtype = jnp.dtype(param_dtype)
        self.remat = remat
        self.embed_tokens = Embed(cfg.vocab_size, cfg.hidden_size, param_dtype, rngs)
        self.layers = nnx.List([Block(cfg, self.dtype, param_dtype, i, rngs) for i in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype)
        if cfg.tie_word_embeddings:
            self.lm_head = nnx.data(None)
        else:
            self.lm_head = Linear(
                cfg.hidden_size, cfg.vocab_size, axes=("vocab", "embed"), bias=False,
                cfg_dtype=self.dtype, param_dtype=param_dtype, uid=-1, rngs=rngs,
            )

    def hidden_states(self, input_ids, view: Visibility, *, ctx: Ctx = Ctx()):
        """Final-norm hidden states ``[B, T, D]`` of ``input_ids`` [B, T] seen as ``view`` describes
        (positions, masks, the decode cache slot if any), and the updated cache (None without a slot). With
        ``view.columns`` [B, C], ``[B, C, D]`` at those columns, the last layer computing its queries,
        attention output and MLP there only (its keys and values still from every column).
        """
        B, T = input_ids.shape
        slot = view.slot
        cache = None if slot is None else slot.cache
        write_index = jnp.zeros((B,), jnp.int32) if slot is None else slot.write_index
        columns = view.columns
        S = view.kv_mask.shape[1]
        q_cols = write_index[:, None] + jnp.arange(T)[None, :]  # [B, T]
        mask = attention_mask(q_cols, view.kv_mask, S, view.segment_ids, view.branch_ids)  # [B, T, S]
        rot = rotary(view.positions, self.config.inv_freq(), S, self.dtype)  # shared by every layer
        x = shard_activation(self.embed_tokens(input_ids, self.dtype), ("batch", "seq", "act_embed"))
        new_cache = []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            queries = columns if i == last else None
            if self.remat and cache is None:  # recompute the layer's activations in the backward pass
                graphdef, state = nnx.split(layer)
                def run(st, x, r, m, qc, g=graphdef):
                    return nnx.merge(g, st)(x, r, m, ctx, None, write_index, qc)[0]

                x, c = jax.checkpoint(run)(state, x, rot, mask, queries), None
            else:
                x, c = layer(x, rot, mask, ctx, None if cache is None else cache[i], write_index, queries)
            new_cache.append(c)
        return self.norm(x), (None if cache is None else new_cache)

    def head_weight(self):
        """The output projection ``[V, D]`` in the compute dtype (the token embedding when tied)."""
        w = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return w[...].astype(self.dtype)

    def logits(self, h):
        """h [B, T, D] (or [B, D]) -> float32 logits [B, T, V] (or [B, V])."""
        return project_to_vocab(h, self.head_weight())

    def __call__(self, input_ids, attention_mask=None, *, ctx: Ctx = Ctx()):
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        h, _ = self.hidden_states(input_ids, Visibility(positions_from_mask(attention_mask), attention_mask), ctx=ctx)
        return self.logits(h)


def project_to_vocab(h, w):
    """h [B, T, D] (or [B, D]) and the head w [V, D] -> float32 logits [B, T, V] (or [B, V])."""
    logits = jnp.einsum("...d,vd->...v", h.astype(w.dtype), w, preferred_element_type=jnp.float32)
    return shard_activation(logits, ("batch", "seq", "act_vocab")) if logits.ndim == 3 else logits


def positions_from_mask(attention_mask):
    """Position ids from a (left- or right-) padded mask [B, T]: count of real tokens before, 0 on pads."""
    m = attention_mask.astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(m, axis=-1) - 1, 0) * m


def init_model(config_or_preset, seed: int = 0, dtype=jnp.float32, param_dtype=None, remat=False) -> Transformer:
    """A randomly initialised model from a ``ModelConfig``, a config.json / model dir, or a preset name."""
    cfg = config_or_preset if isinstance(config_or_preset, ModelConfig) else load_config(config_or_preset)
    return Transformer(cfg, dtype=dtype, param_dtype=param_dtype or dtype, remat=remat, rngs=nnx.Rngs(seed))


def abstract_model(cfg: ModelConfig, dtype=jnp.float32, param_dtype=None, remat=False) -> Transformer:
    """The model's structure with ``ShapeDtypeStruct`` leaves: nothing is allocated."""
    return nnx.eval_shape(
        lambda: Transformer(cfg, dtype=dtype, param_dtype=param_dtype or dtype, remat=remat, rngs=nnx.Rngs(0))
    )


def count_params(model: Transformer, variable_type=nnx.Param) -> int:
    state = nnx.state(model, variable_type)
    return int(sum(x.size for x in jax.tree.leaves(state)))
