"""The wheel carries the presets: build it, install it (not editable) into a fresh venv, and use it
from outside the checkout.

The fresh venv sees the test venv's third-party packages through a ``.pth`` line (a directory
listed there is added to ``sys.path`` without running its ``.pth`` files, so the editable
``ttpa_jax`` of the test venv stays out), and its own ``ttpa_jax`` is the installed wheel's.
"""

from __future__ import annotations

import json
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _run(*cmd, cwd, timeout=300) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout[-2000:]}{proc.stderr[-3000:]}"
    return proc


def test_installed_wheel_finds_the_presets_outside_the_checkout(tmp_path):
    src = tmp_path / "src"  # a copy of the sources, so the build leaves nothing in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in ("ttpa_jax", "models"):
        shutil.copytree(REPO / name, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", wheels, ".", cwd=src)
    (wheel,) = wheels.glob("ttpa_jax-*.whl")

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    fresh_site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                           cwd=tmp_path).stdout.strip())
    ours = [p for p in {sysconfig.get_paths()["purelib"], *site.getsitepackages()} if Path(p).is_dir()]
    (fresh_site / "test-venv-packages.pth").write_text("\n".join(sorted(ours)) + "\n")
    _run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", wheel, cwd=tmp_path)

    where = _run(python, "-c", "import ttpa_jax, sys; print(ttpa_jax.__file__); print('__editable__' in str(sys.modules))",
                 cwd=tmp_path).stdout.split()
    assert where[0].startswith(str(venv)) and where[1] == "False"
    listing = _run(python, "-m", "ttpa_jax.models", "--json", cwd=tmp_path).stdout
    names = {row["preset"] for row in json.loads(listing)}
    assert {"qwen2.5-7b", "tiny-llama3", "llama3.1-8b"} <= names and len(names) == len(list((REPO / "models").glob("*.json")))
    code = ("from ttpa_jax.model.config import load_config, presets_dir\n"
            "from ttpa_jax.cpu.attention_kernel import SOURCE\n"
            "import ttpa_jax\n"
            "c = load_config('qwen2.5-7b')\n"
            "m = ttpa_jax.init_model('tiny-llama3')\n"
            "print(presets_dir(), c.hidden_size, c.num_hidden_layers, type(m).__name__, SOURCE.is_file())")
    out = _run(python, "-c", code, cwd=tmp_path).stdout.split()
    assert out[0].startswith(str(venv)) and out[1:] == ["3584", "28", "Transformer", "True"]  # the kernel's source too
