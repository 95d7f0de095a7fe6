"""Activation memory of one train step: the arrays the forward pass keeps for the backward pass.

Pure arithmetic on the architecture. Per decoder layer and token, with c the compute dtype's bytes,
D hidden, N/K query/key-value heads, H head dim, F MLP width, T sequence length, V vocabulary:

- attention:  c * (2D + 2NH + 2KH)   layer input and its norm, q (after RoPE), attention output, k, v
- scores:     (4 + 4 + c) * N * T    fp32 scores (exponentials), fp32 softmax, probabilities in c,
                                     for rows up to ``attention.DEFAULT_BLOCK`` queries; longer rows
                                     run in block x block tiles recomputed in the backward pass, so no
                                     layer keeps scores; one layer's tiled backward holds at a time
                                     (counted once, per sequence): a tile's ``(4 + 4 + c) * N * block**2``,
                                     head-major copies of q and the output gradient ``2c * N * H * T``,
                                     fp32 dq, dk, dv ``4 * (N + 2K) * H * T`` and two copies of the mask
                                     ``2 * T**2``
- MLP:        c * (2D + 4F)          residual and its norm, gate, up, silu(gate), their product
- LoRA:       c * r per adapted projection (x A^T); with dropout also c * d_in + 1 (the masked input)

and once per sequence position:

- logits:     3 * 4 * V              fp32 logits [B, T, V], the softmax exponentials of the
                                     log-softmax and their gradient; with ``logits_chunk`` C only
                                     at most C positions of each sequence at a time (T replaced by
                                     ``attention.even_chunks``' chunk size)

Without remat all layers' activations are alive when the backward pass starts (the peak). With
remat (one checkpoint per layer) only each layer's input ``c * D`` is kept; the backward pass
recomputes one layer at a time, holding that layer's activations and their gradients (counted as
twice one layer). Each term is divided by the devices that share it: the batch dimension by
data * fsdp (``"batch"``), heads, MLP width and vocabulary by ``tensor`` when they divide
(``"act_heads"``, ``"act_kv_heads"``, ``"act_mlp"``, ``"act_vocab"`` in ``sharding.RULES``).
"""

from __future__ import annotations

import dataclasses

from ttpa_jax.model.architecture import ModelConfig
from ttpa_jax.model.attention import DEFAULT_BLOCK as ATTENTION_BLOCK
from ttpa_jax.model.attention import even_chunks
from ttpa_jax.model.sharding import spec_for

LOGIT_COPIES = 3  # fp32 logits, softmax exponentials, their gradient


def split_of(logical: str, dim: int, mesh) -> int:
    """Devices sharing a dimension of size ``dim`` with logical axis ``logical`` under the rules."""
    spec = spec_for((logical,), (dim,), mesh)
    entry = spec[0] if len(spec) else None
    names = (entry,) if isinstance(entry, str) else (entry or ())
    n = 1
    for a in names:
        n *= mesh.shape[a]
    return n


@dataclasses.dataclass(frozen=True)
class TensorSplit:
    """How many devices share the tensor-parallel dimensions of the activations."""

    heads: int = 1
    kv_heads: int = 1
    mlp: int = 1
    vocab: int = 1

    @classmethod
    def for_mesh(cls, cfg: ModelConfig, mesh) -> TensorSplit:
        return cls(
            heads=split_of("act_heads", cfg.num_attention_heads, mesh),
            kv_heads=split_of("act_kv_heads", cfg.num_key_value_heads, mesh),
            mlp=split_of("act_mlp", cfg.intermediate_size, mesh),
            vocab=split_of("act_vocab", cfg.vocab_size, mesh),
        )


def lora_in_dims(cfg: ModelConfig, targets) -> list[int]:
    """Input width of each adapted projection in one layer."""
    D, NH, F = cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim, cfg.intermediate_size
    width = {"q_proj": D, "k_proj": D, "v_proj": D, "o_proj": NH, "gate_proj": D, "up_proj": D, "down_proj": F}
    return [width[t] for t in targets]


def layer_bytes_per_token(cfg: ModelConfig, seq_len: int, c: int, split: TensorSplit = TensorSplit(),
                          lora_rank: int = 0, lora_targets=(), lora_dropout: float = 0.0) -> dict[str, float]:
    """Saved activations of one decoder layer for one token, by part (bytes on one device)."""
    D, N, K, H, F = (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim,
                     cfg.intermediate_size)
    out = {
        "attention": c * (2 * D + 2 * N * H / split.heads + 2 * K * H / split.kv_heads),
        "scores": 0.0 if seq_len > ATTENTION_BLOCK else (4 + 4 + c) * N * seq_len / split.heads,
        "mlp": c * (2 * D + 4 * F / split.mlp),
        "lora": 0.0,
    }
    if lora_rank > 0:
        dims = lora_in_dims(cfg, lora_targets)
        out["lora"] = c * lora_rank * len(dims)
        if lora_dropout > 0:
            out["lora"] += sum(c * d + 1 for d in dims)
    return out


def tiled_backward_bytes(cfg: ModelConfig, seq_len: int, c: int, split: TensorSplit = TensorSplit()) -> float:
    """What one layer's tiled attention backward holds per sequence (the module doc's list)."""
    N, K, H = cfg.num_attention_heads / split.heads, cfg.num_key_value_heads / split.kv_heads, cfg.head_dim
    tile = (4 + 4 + c) * N * ATTENTION_BLOCK**2
    return tile + (2 * c * N + 4 * (N + 2 * K)) * H * seq_len + 2 * seq_len**2


def logits_bytes_per_token(cfg: ModelConfig, split: TensorSplit = TensorSplit()) -> float:
    return LOGIT_COPIES * 4 * cfg.vocab_size / split.vocab


def activation_bytes(cfg: ModelConfig, seqs: int, seq_len: int, c: int, split: TensorSplit = TensorSplit(), *,
                     remat: bool = False, lora_rank: int = 0, lora_targets=(), lora_dropout: float = 0.0,
                     logits_chunk: int = 0) -> dict:
    """Activation bytes on one device for ``seqs`` local sequences of ``seq_len`` tokens (one
    micro-batch; DPO counts chosen and rejected sequences).

    Returns ``{"layers": ..., "logits": ..., "total": ..., "per_layer": {part: bytes}}``: ``layers``
    is what the decoder layers hold at the peak (all of them, or with remat their inputs plus one
    recomputed layer and its gradients), ``logits`` the vocabulary-sized buffers.
    """
    tokens = seqs * seq_len
    parts = layer_bytes_per_token(cfg, seq_len, c, split, lora_rank, lora_targets, lora_dropout)
    one_layer = sum(parts.values()) * tokens
    L = cfg.num_hidden_layers
    final_norm = 2 * c * cfg.hidden_size * tokens
    if seq_len > ATTENTION_BLOCK:  # one layer's tiled backward at a time, next to the layers' activations
        final_norm += seqs * tiled_backward_bytes(cfg, seq_len, c, split)
    if remat:
        layers = L * c * cfg.hidden_size * tokens + 2 * one_layer + final_norm
    else:
        layers = L * one_layer + final_norm
    head_positions = even_chunks(seq_len, logits_chunk)[1] if 0 < logits_chunk < seq_len else seq_len
    logits = logits_bytes_per_token(cfg, split) * seqs * head_positions
    return {
        "layers": int(layers), "logits": int(logits), "total": int(layers + logits),
        "per_layer": {k: int(v * tokens) for k, v in parts.items()},
    }
