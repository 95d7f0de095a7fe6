"""The settings every training method shares: tyro dataclasses, YAML defaults, CLI overrides.

``RunArgs`` holds what every method takes (model, data, run directory, schedule, the nested
``--lora.*``, ``--dataset.*``, ``--optim.*``, ``--mesh.*``, ``--dist.*``); each method's unit adds its
own fields in a subclass (``train.sft.config.SftArgs``, ...), so ``train sft --help`` lists no DPO
option and a run's ``RUN_DIR/config.yaml`` holds its own method's fields only. ``train.methods``
maps each subcommand to its class and parses the command line. Every field's docstring is its
``--help`` text. No JAX is imported here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from ttpa_jax.core.errors import ConfigError
from ttpa_jax.model.settings import LoraConfig, ShardingRules

LENGTHS_PER_OCTAVE = (1, 2, 4, 8)  # the row lengths per doubling a packed batch may take (``packing``)


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
    """Shuffle records (seeded by --seed, reshuffled every epoch); with the shared-prefix DPO layout the
    pairs of one prompt stay together, so a batch runs their prompt once."""
    pad_multiple: int = 64
    """Batches are padded to the smallest power-of-two multiple of this that fits (fewer recompiles)."""
    assistant_only: bool = True
    """sft: loss on assistant tokens only; off, every token (language-model training, e.g. from scratch)."""
    pack: bool = True
    """sft: pack several records into each row (attention and positions per record, the same loss as
    one record per row, fewer padding tokens); the packing/efficiency metric is the real-token share."""
    row_length: int = 0
    """Longest row in tokens when a row holds several sequences (packed SFT, a shared-prefix DPO row of
    several prompts); 0: max_length. Each sequence stays within max_length; a longer row takes more
    of them (records of 600 tokens pack only one per row of 1024, three per row of 2048), and costs no
    more per token: attention runs per record."""
    lengths_per_octave: int = 2
    """Row lengths a packed SFT or shared-prefix DPO batch may take per doubling: 2 gives pad_multiple x
    2**k and 1.5 x 2**k (..., 768, 1024, 1536, ...); 4 adds 1.25 and 1.75 x 2**k (896 between 768 and
    1024), 8 finer still; 1 powers of two only. Finer: less padding per step (SmolLM2 DPO step 13% faster
    on rows of 896 over 1024) but more distinct shapes to compile (20-50 s each on a CPU, about a minute
    on a GPU): worth it on long runs. One-sequence-per-row batches keep powers of two."""

    def __post_init__(self):
        if self.lengths_per_octave not in LENGTHS_PER_OCTAVE:
            raise ConfigError(f"dataset.lengths_per_octave must be one of {', '.join(map(str, LENGTHS_PER_OCTAVE))}, "
                              f"got {self.lengths_per_octave}")
        if self.row_length < 0:
            raise ConfigError(f"dataset.row_length must be 0 or a token count, got {self.row_length}")
        if self.row_length and self.row_length < self.max_length:
            raise ConfigError(f"dataset.row_length {self.row_length} is below dataset.max_length {self.max_length} "
                              f"(0 uses max_length)")


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


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunArgs:
    """What every training objective takes: the model, the data, the run directory, the schedule."""

    objective: ClassVar[str] = ""
    """The subcommand (``train.methods``), set by each method's subclass."""
    model: str
    """Local HF model directory (safetensors + tokenizer + chat template), or a preset name (random init)."""
    data: str
    """Training data: JSONL, a Hugging Face `datasets` directory (save_to_disk) or parquet file(s)."""
    out: str
    """Run directory. Re-running the same command on it resumes from its latest checkpoint."""
    tokenizer: str | None = None
    """Tokenizer directory when --model is a preset (default: the model directory)."""
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
    progress: bool = True
    """Show progress bars (tokenizing, training)."""
    lora: LoraConfig = LoraConfig()
    dataset: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    mesh: MeshConfig = MeshConfig()
    sharding: ShardingRules = ShardingRules()
    dist: DistConfig = DistConfig()

    def to_dict(self) -> dict[str, Any]:
        """What ``RUN_DIR/config.yaml`` holds: the subcommand, then this method's fields."""
        return {"objective": self.objective, **_plain(dataclasses.asdict(self))}


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def from_dict(cls, d: dict[str, Any], base=None, where: str = "config"):
    """Build dataclass ``cls`` from a nested dict, on top of ``base`` (default: ``cls``'s defaults, every
    field without one then taken from ``d``); unknown or missing keys raise ``ConfigError`` naming them."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    updates = {}
    for k, v in (d or {}).items():
        key = k.replace("-", "_")
        if key not in fields:
            raise ConfigError(f"{where}: unknown field {k!r} (known: {', '.join(sorted(fields))})")
        cur = getattr(base, key, None) if base is not None else None
        sub = fields[key].default if cur is None else cur
        if dataclasses.is_dataclass(sub):
            if not isinstance(v, dict):
                raise ConfigError(f"{where}: field {k!r} expects a mapping")
            updates[key] = from_dict(type(sub), v, sub, f"{where}.{k}")
        elif isinstance(v, list):
            updates[key] = tuple(v)
        else:
            updates[key] = v
    if base is not None:
        return dataclasses.replace(base, **updates)
    missing = [n for n, f in fields.items() if n not in updates and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: missing field(s) {', '.join(missing)}")
    return cls(**updates)


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        d = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: invalid YAML ({e})") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{p}: expected a mapping of fields at the top level")
    return d


def _config_arg(argv: list[str]) -> str | None:
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--config="):
            return a.split("=", 1)[1]
    return None
