"""What ``python -m ttpa_jax.serve`` takes; no JAX is imported here (``--help`` is fast)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from ttpa_jax.core.errors import ConfigError
from ttpa_jax.decode.settings import DEFAULT_BUCKET


@dataclasses.dataclass
class ServeArgs:
    """Serve a model over OpenAI's chat-completions API (tools in, tool_calls out, streaming)."""

    model: str
    """What to serve: a Hugging Face model directory, a FILE.gguf, a base model name
    (smollm2-135m-instruct) or a training run directory (its latest checkpoint, adapters applied)."""
    host: str = "127.0.0.1"
    """Address to listen on; the default takes connections from this machine only."""
    port: int = 8000
    """TCP port to listen on (0: any free port, printed at start)."""
    served_model_name: str | None = None
    """The model name clients send and /v1/models lists (default: the --model path's last part)."""
    api_key_env: str = "TTPA_SERVE_API_KEY"
    """Name of the environment variable holding the API key clients must send (Authorization: Bearer KEY);
    when it is unset or empty no key is needed. The key is never taken from the command line or logged."""
    batch_size: int = 8
    """Most rows decoded together (a request with n choices takes n rows)."""
    max_queue: int = 64
    """Most requests waiting to decode; one more is refused with HTTP 429."""
    batch_wait_ms: float = 5.0
    """How long the decoder waits, once a request is in, for others arriving with it."""
    max_tokens: int = 512
    """New tokens of a request that names no max_tokens (capped by the model's context)."""
    tool_format: Literal["auto", "qwen", "llama"] = "auto"
    """Tool-call format the model's output is parsed with (ttpa_jax.tools.calls, as evaluate parses it)."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Parameter and compute dtype ("auto": the checkpoint's)."""
    bucket: int = DEFAULT_BUCKET
    """Prompt widths are padded to buckets (multiples of this), so varied prompts share compiled loops."""
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    """uvicorn's log level (requests are logged by path and status; bodies and keys never are)."""

    def __post_init__(self):
        for name in ("batch_size", "max_queue", "max_tokens", "bucket"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.port < 65536:
            raise ConfigError(f"--port must be in [0, 65535], got {self.port}")
        if self.batch_wait_ms < 0:
            raise ConfigError(f"--batch-wait-ms must be >= 0, got {self.batch_wait_ms}")
