"""The architecture of a model, read from and written back to a Hugging Face ``config.json``.

One dataclass describes both supported families:

- ``qwen2`` (Qwen2 / Qwen2.5): bias on the q, k and v projections, none on o.
- ``llama`` (Llama 3.x): optional ``attention_bias`` / ``mlp_bias``, llama3 RoPE frequency scaling,
  tied embeddings in Llama 3.2.

Both RoPE layouts are read: transformers 5 writes ``"rope_parameters": {"rope_type", "rope_theta",
...}``; older configs have top-level ``rope_theta`` and ``rope_scaling``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from ttpa_jax.core.errors import ConfigError

SUPPORTED_MODEL_TYPES = ("qwen2", "llama")
SUPPORTED_ROPE_TYPES = ("default", "llama3")




@dataclasses.dataclass(frozen=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    # llama3 scaling: {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    # "original_max_position_embeddings"}; None for plain RoPE. Stored as a sorted tuple of items so
    # the config stays hashable (it is a static argument of jitted functions).
    rope_scaling: tuple[tuple[str, Any], ...] | None = None
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    # Everything else in the original config.json, written back unchanged on export.
    extra: tuple[tuple[str, Any], ...] = ()

    # ---------------------------------------------------------------- derived
    @property
    def rope_scaling_dict(self) -> dict[str, Any] | None:
        return dict(self.rope_scaling) if self.rope_scaling else None

    @property
    def pad_id(self) -> int:
        """The id sequences are padded with: ``pad_token_id``, else 0 (the one rule; padded positions
        are masked, so any id in the vocabulary works)."""
        return 0 if self.pad_token_id is None else int(self.pad_token_id)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        if self.eos_token_id is None:
            return ()
        if isinstance(self.eos_token_id, int):
            return (self.eos_token_id,)
        return tuple(self.eos_token_id)

    def inv_freq(self) -> np.ndarray:
        """RoPE inverse frequencies ``[head_dim // 2]`` (float32), with llama3 scaling applied."""
        dim = self.head_dim
        inv = 1.0 / (self.rope_theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim))
        inv = inv.astype(np.float32)
        rs = self.rope_scaling_dict
        if rs is None:
            return inv
        factor = float(rs["factor"])
        low, high = float(rs["low_freq_factor"]), float(rs["high_freq_factor"])
        old_len = float(rs["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(is_medium, smoothed, scaled).astype(np.float32)

    # ---------------------------------------------------------------- HF json
    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], source: str = "config.json") -> ModelConfig:
        """Build from a parsed HF config.json; ``source`` names the file in error messages."""
        mt = d.get("model_type")
        if mt not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"{source}: model_type {mt!r} is not supported (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
            )

        def need(key):
            if key not in d or d[key] is None:
                raise ConfigError(f"{source}: missing field {key!r}")
            return d[key]

        n_heads = int(need("num_attention_heads"))
        hidden = int(need("hidden_size"))
        head_dim = d.get("head_dim") or hidden // n_heads
        n_kv = int(d.get("num_key_value_heads") or n_heads)
        if n_heads % n_kv:
            raise ConfigError(
                f"{source}: num_attention_heads ({n_heads}) is not a multiple of num_key_value_heads ({n_kv})"
            )
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise ConfigError(f"{source}: hidden_act {act!r} is not supported (only 'silu')")
        if d.get("use_sliding_window"):
            raise ConfigError(f"{source}: use_sliding_window=true is not supported")

        # RoPE: transformers 5 layout first, then the older one.
        rp = d.get("rope_parameters")
        if isinstance(rp, dict) and "rope_theta" in rp:
            theta = float(rp["rope_theta"])
            scaling = {k: v for k, v in rp.items() if k != "rope_theta"}
        else:
            theta = float(d.get("rope_theta", 10000.0))
            scaling = dict(d.get("rope_scaling") or {})
        rope_type = scaling.pop("rope_type", scaling.pop("type", "default")) or "default"
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise ConfigError(
                f"{source}: rope type {rope_type!r} is not supported (supported: {', '.join(SUPPORTED_ROPE_TYPES)})"
            )
        rope_scaling = None
        if rope_type == "llama3":
            for k in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
                if k not in scaling:
                    raise ConfigError(f"{source}: llama3 rope scaling is missing {k!r}")
            rope_scaling = tuple(sorted({"rope_type": "llama3", **scaling}.items()))

        if mt == "qwen2":
            qkv_bias, o_bias, mlp_bias = True, False, False
        else:
            qkv_bias = o_bias = bool(d.get("attention_bias", False))
            mlp_bias = bool(d.get("mlp_bias", False))

        eos = d.get("eos_token_id")
        if isinstance(eos, list):
            eos = tuple(eos)
        known = {f.name for f in dataclasses.fields(cls)} | {
            "rope_parameters", "rope_scaling", "attention_bias", "hidden_act", "use_sliding_window",
        }
        extra = tuple(sorted((k, _freeze(v)) for k, v in d.items() if k not in known))
        return cls(
            model_type=mt,
            vocab_size=int(need("vocab_size")),
            hidden_size=hidden,
            intermediate_size=int(need("intermediate_size")),
            num_hidden_layers=int(need("num_hidden_layers")),
            num_attention_heads=n_heads,
            num_key_value_heads=n_kv,
            head_dim=int(head_dim),
            max_position_embeddings=int(d.get("max_position_embeddings", 32768)),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=rope_scaling,
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            mlp_bias=mlp_bias,
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=eos,
            pad_token_id=d.get("pad_token_id"),
            extra=extra,
        )

    def to_hf_dict(self) -> dict[str, Any]:
        """A config.json (transformers 5 layout) that ``AutoConfig`` reads back to this config."""
        d: dict[str, Any] = {k: _thaw(v) for k, v in self.extra}
        rope = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling:
            rope.update(dict(self.rope_scaling))
            rope["rope_theta"] = self.rope_theta
        d.update(
            model_type=self.model_type,
            architectures=["Qwen2ForCausalLM" if self.model_type == "qwen2" else "LlamaForCausalLM"],
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            hidden_act="silu",
            max_position_embeddings=self.max_position_embeddings,
            rms_norm_eps=self.rms_norm_eps,
            rope_parameters=rope,
            tie_word_embeddings=self.tie_word_embeddings,
            bos_token_id=self.bos_token_id,
            eos_token_id=list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id,
            pad_token_id=self.pad_token_id,
        )
        if self.model_type == "llama":
            d["attention_bias"] = self.qkv_bias
            d["mlp_bias"] = self.mlp_bias
        else:
            d["use_sliding_window"] = False
        return d

    def replace(self, **kw) -> ModelConfig:
        return dataclasses.replace(self, **kw)


def _freeze(v):
    if isinstance(v, dict):
        return ("__dict__", tuple(sorted((k, _freeze(x)) for k, x in v.items())))
    if isinstance(v, list):
        return ("__list__", tuple(_freeze(x) for x in v))
    return v


def _thaw(v):
    if isinstance(v, tuple) and len(v) == 2 and v[0] == "__dict__":
        return {k: _thaw(x) for k, x in v[1]}
    if isinstance(v, tuple) and len(v) == 2 and v[0] == "__list__":
        return [_thaw(x) for x in v[1]]
    return v
