"""``python -m ttpa_jax.serve --model DIR|FILE.gguf|NAME|RUN_DIR [--port 8000] [--api-key-env VAR]``

Loads the model (a run directory: its latest checkpoint over its base, adapters applied), starts the
decoding thread (``serve.engine``) and serves the app (``serve.app``) with uvicorn on 127.0.0.1 by
default. ``Server`` runs the same in a background thread for tests and benchmarks.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import tyro

from ttpa_jax.core.cli import run as run_cli
from ttpa_jax.core.cli import stage_main
from ttpa_jax.serve.settings import ServeArgs


def load_engine(args: ServeArgs):
    """(engine, served model name) for ``args.model``."""
    import ttpa_jax
    from ttpa_jax.model.base_models import resolve_model
    from ttpa_jax.serve.engine import Engine
    from ttpa_jax.text.prompts import eos_token_ids, load_tokenizer

    path = Path(args.model)
    if (path / "config.yaml").is_file():  # a training run
        from ttpa_jax.export.weights import load_run

        model, cfg, _ = load_run(path)
        tokenizer_dir = Path(cfg.tokenizer or resolve_model(cfg.model))
    else:
        tokenizer_dir = Path(resolve_model(args.model))  # a base model name or FILE.gguf -> its directory
        model = ttpa_jax.load_pretrained(tokenizer_dir, dtype=None if args.dtype == "auto" else args.dtype)
    tokenizer = load_tokenizer(tokenizer_dir)
    eos = eos_token_ids(model.config, tokenizer, tokenizer_dir if tokenizer_dir.is_dir() else None)
    engine = Engine(model, tokenizer, eos_ids=eos, batch_size=args.batch_size, max_queue=args.max_queue,
                    batch_wait_s=args.batch_wait_ms / 1000, default_max_tokens=args.max_tokens, bucket=args.bucket)
    name = args.served_model_name or path.name.removesuffix(".gguf") or str(args.model)
    return engine, name


class Server:
    """uvicorn serving ``app`` in a background thread: ``start()`` returns once it listens;
    ``stop()`` shuts it down. ``url`` is the base URL of the API (``http://HOST:PORT/v1``)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import uvicorn

        self._server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                                     access_log=False, lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, name="ttpa-serve-http", daemon=True)
        self.host = host

    def start(self, timeout: float = 30.0) -> Server:
        self._thread.start()
        waited = 0.0
        while not self._server.started:
            if not self._thread.is_alive() or waited > timeout:
                raise RuntimeError("the server did not start")
            threading.Event().wait(0.02)
            waited += 0.02
        return self

    @property
    def port(self) -> int:
        return self._server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join()


@stage_main
def main(argv: Sequence[str] | None = None) -> int:
    args = tyro.cli(ServeArgs, args=argv, prog="python -m ttpa_jax.serve")
    import uvicorn  # loaded once the command line is good

    from ttpa_jax.serve.app import create_app

    engine, name = load_engine(args)
    api_key = os.environ.get(args.api_key_env) or None
    app = create_app(engine, served_name=name, api_key=api_key, tool_format=args.tool_format)
    print(f"serving {args.model} as model {name!r} on http://{args.host}:{args.port}/v1 "
          f"({'API key required, from $' + args.api_key_env if api_key else 'no API key needed'})", flush=True)
    engine.start()
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    finally:
        engine.stop()
    return 0


if __name__ == "__main__":
    run_cli(main)
