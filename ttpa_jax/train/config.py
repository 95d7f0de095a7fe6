"""Configuration of ``python -m ttpa_jax.train``: tyro dataclasses, YAML defaults, CLI overrides.

Every field's docstring is its ``--help`` text. ``--config configs/NAME.yaml`` supplies defaults; flags
on the command line override them. The run writes the final config to ``RUN_DIR/config.yaml``.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import tyro
import yaml

from ttpa_jax.model.lora import LoraConfig


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Training data: JSONL in, tokenized record files out, batches through grain."""

    format: Literal["arrayrecord", "tfrecord"] = "arrayrecord"
    """File format of the tokenized data written under RUN_DIR/data."""
    max_length: int = 2048
    """Longest sequence in tokens (prompt + completion)."""
    overflow: Literal["drop", "truncate"] = "drop"
    """What to do with a record longer than max_length; either way the count is reported."""
    batch_size: int = 8
    """Global batch: sequences (sft) or preference pairs (dpo) per optimizer step, over all processes."""
    shuffle: bool = True
    """Shuffle records (seeded by --seed, reshuffled every epoch)."""
    pad_multiple: int = 64
    """Batches are padded to the smallest power-of-two multiple of this that fits (fewer recompiles)."""
    assistant_only: bool = True
    """sft: loss on assistant tokens only; off, every token (language-model training, e.g. from scratch)."""


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup and cosine decay, global-norm clipping, gradient accumulation."""

    lr: float = 1e-4
    """Peak learning rate."""
    warmup_steps: int = 10
    """Linear warmup from 0 to lr over this many steps."""
    min_lr_ratio: float = 0.1
    """Cosine decay ends at lr * min_lr_ratio at the last step."""
    weight_decay: float = 0.0
    """Decoupled weight decay on matrices (not on norms or biases)."""
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_norm: float = 1.0
    """Clip the global gradient norm to this; 0 disables clipping."""
    grad_accum: int = 1
    """Split each batch into this many micro-batches; gradients are summed, then one update."""


@dataclasses.dataclass(frozen=True)
class DpoConfig:
    """DPO objective (used by ``train dpo``)."""

    beta: float = 0.1
    """Temperature of the implicit reward: rewards are beta * (policy - reference) log-probs."""
    loss_type: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"
    """sigmoid: DPO; ipo: squared loss to 1/(2 beta); hinge: SLiC hinge loss."""
    label_smoothing: float = 0.0
    """Conservative DPO: probability that a preference label is flipped (sigmoid loss only)."""
    sft_weight: float = 0.0
    """Weight of an extra SFT term (mean NLL per chosen completion token)."""
    precompute_ref: bool = False
    """Compute reference log-probs once before training and store them with the tokenized data."""


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh ("data", "fsdp", "tensor"); -1 fills the remaining devices."""

    data: int = 1
    """Data-parallel replicas (each holds the whole model, or its fsdp shard)."""
    fsdp: int = -1
    """Fully-sharded data parallelism: parameters and optimizer state split along the model dimension."""
    tensor: int = 1
    """Tensor parallelism: heads, MLP width and vocabulary split across devices."""


@dataclasses.dataclass(frozen=True)
class DistConfig:
    """Multi-process runs. Usually nothing to set: TPU pods and SLURM are detected from the
    environment. Give all three to start processes by hand (one per host)."""

    coordinator: str | None = None
    """Address HOST:PORT of process 0's coordinator service."""
    num_processes: int | None = None
    """Number of processes taking part."""
    process_id: int | None = None
    """This process's index, 0 .. num_processes-1."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Fine-tune a model with SFT or DPO."""

    objective: Annotated[Literal["sft", "dpo"], tyro.conf.Suppress] = "dpo"
    """Training objective (chosen by the sft/dpo subcommand)."""
    model: str = "runs/demo/sft-model"
    """Local HF model directory (safetensors + tokenizer + chat template), or a preset name (random init)."""
    tokenizer: str | None = None
    """Tokenizer directory when --model is a preset (default: the model directory)."""
    data: str = "runs/demo/data/pairs.jsonl"
    """Training JSONL: {"messages","tools"} records for sft, {"prompt","chosen","rejected","tools"} for dpo."""
    out: str = "runs/demo/dpo"
    """Run directory. Re-running the same command on it resumes from its latest checkpoint."""
    config: str | None = None
    """YAML file of defaults for every field below; command-line flags override it."""
    steps: int = 0
    """Optimizer steps; 0 means --epochs passes over the data."""
    epochs: float = 1.0
    """Passes over the data when --steps is 0."""
    stop_after: int = 0
    """Stop this invocation after this many steps (to fit a job's time limit); rerun to continue."""
    seed: int = 0
    """Seed for data order, LoRA initialisation and dropout."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Compute dtype; the frozen base is stored in it, trainable parameters are always float32."""
    remat: bool = False
    """Recompute activations in the backward pass (less memory, more compute)."""
    logits_chunk: int = 0
    """Run the LM head and log-softmax over this many positions at a time (0: the whole sequence). With
    a large vocabulary, e.g. 512 keeps [batch, 512, vocab] logits alive instead of [batch, length, vocab],
    for one more LM-head matmul in the backward pass."""
    save_every: int = 100
    """Checkpoint every N steps (and at the end)."""
    keep: int = 3
    """Checkpoints to keep (the latest K)."""
    log_every: int = 1
    """Write metrics every N steps."""
    mae: bool = False
    """TL-Training MAE: assistant tool calls whose tool feedback is an error get zero loss weight (sft)."""
    pkt_wmax: float = 0.0
    """TL-Training PKT: weight key tokens by min(|non-key|/|key|, W); 0 disables (sft)."""
    lora: LoraConfig = LoraConfig()
    dataset: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    dpo: Annotated[DpoConfig, tyro.conf.OmitArgPrefixes] = DpoConfig()
    mesh: MeshConfig = MeshConfig()
    dist: DistConfig = DistConfig()

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def from_dict(cls, d: dict[str, Any], base=None, where: str = "config"):
    """Build dataclass ``cls`` from a nested dict, on top of ``base``; unknown keys raise, naming them."""
    base = base if base is not None else cls()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    updates = {}
    for k, v in (d or {}).items():
        key = k.replace("-", "_")
        if key not in fields:
            raise ValueError(f"{where}: unknown field {k!r} (known: {', '.join(sorted(fields))})")
        cur = getattr(base, key)
        if dataclasses.is_dataclass(cur):
            if not isinstance(v, dict):
                raise ValueError(f"{where}: field {k!r} expects a mapping")
            updates[key] = from_dict(type(cur), v, cur, f"{where}.{k}")
        elif isinstance(cur, tuple) and isinstance(v, list):
            updates[key] = tuple(v)
        else:
            updates[key] = v
    return dataclasses.replace(base, **updates)


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: config file not found")
    try:
        d = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{p}: invalid YAML ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{p}: expected a mapping of fields at the top level")
    return d


def _config_arg(argv: list[str]) -> str | None:
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--config="):
            return a.split("=", 1)[1]
    return None


def parse_cli(argv: list[str] | None = None) -> TrainConfig:
    """``train [sft|dpo] [--config FILE] [flags]`` -> TrainConfig (no subcommand means dpo)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    defaults = {
        "sft": TrainConfig(objective="sft", data="runs/demo/data/train.jsonl", out="runs/demo/sft",
                           model="runs/demo/base-model", lora=LoraConfig(rank=0),
                           optim=OptimConfig(lr=1e-3)),
        "dpo": TrainConfig(objective="dpo"),
    }
    yaml_path = _config_arg(argv)
    if yaml_path:
        d = load_yaml(yaml_path)
        defaults = {k: from_dict(TrainConfig, {**d, "objective": k, "config": yaml_path}, v, yaml_path)
                    for k, v in defaults.items()}
    if not argv or argv[0] not in defaults and argv[0] not in ("-h", "--help"):
        argv = ["dpo", *argv]
    choices = tuple(
        Annotated[TrainConfig, tyro.conf.subcommand(name, default=default, description=_SUBCOMMAND_HELP[name])]
        for name, default in defaults.items()
    )
    return tyro.cli(Union[choices], args=argv,  # type: ignore[valid-type]
                    description="Fine-tune a model with SFT or DPO (LoRA or full); rerun the same command "
                                "to resume. With no arguments at all: the DPO stage of `make demo`.")


_SUBCOMMAND_HELP = {
    "sft": "Supervised fine-tuning on {messages, tools} records (loss on assistant tokens).",
    "dpo": "DPO on {prompt, chosen, rejected, tools} preference records (LoRA reference: adapters off).",
}
