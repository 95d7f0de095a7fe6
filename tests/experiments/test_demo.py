"""The end-to-end pipeline behind `make demo`, in its quick mode (a few steps per stage)."""

import json
import subprocess
import sys


def test_demo_quick_runs_every_stage(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "ttpa_jax.demo", "--quick", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for stage in ("== construct", "== tiny model", "== evaluate zero-shot", "== sft", "== evaluate sft",
                  "== sample (TPS + ESM)", "== dpo", "== evaluate dpo"):
        assert stage in r.stdout
    assert "| Metric | zero-shot | SFT | TTPA (SFT + TPS/ESM DPO) |" in r.stdout and "| Tool selection |" in r.stdout
    assert "stage times: construct " in r.stdout
    assert (out / "report.md").read_text().startswith("# ttpa-jax demo report")
    assert (out / "report.png").stat().st_size > 10_000
    assert (out / "data" / "pairs.jsonl").is_file() and (out / "data" / "pairs.audit.json").is_file()
    assert not list((out / "data").glob("*.tmp*"))
    train = (out / "data" / "train.jsonl").read_text().splitlines()
    test = (out / "data" / "test.jsonl").read_text().splitlines()
    train_tools = {t["function"]["name"] for line in train for t in json.loads(line)["tools"]}
    test_tools = {t["function"]["name"] for line in test for t in json.loads(line)["tools"]}
    assert train_tools and test_tools and not (train_tools & test_tools)  # held-out tools
    pairs = [json.loads(line) for line in (out / "data" / "pairs.jsonl").read_text().splitlines()]
    assert pairs and all({"prompt", "chosen", "rejected", "tools", "meta"} <= p.keys() for p in pairs)
    for run in ("sft", "dpo"):
        assert (out / run / "metrics.jsonl").read_text().strip()
        assert (out / f"{run}-model" / "model.safetensors").is_file()
    dpo = [json.loads(line) for line in (out / "dpo" / "metrics.jsonl").read_text().splitlines()]
    # The policy starts equal to its reference: ln 2 plus the SFT term on the chosen side.
    assert abs(dpo[0]["loss"] - dpo[0]["nll_loss"] - 0.6931) < 1e-3 and abs(dpo[0]["rewards/margins"]) < 1e-4
    for system in ("zero-shot", "sft", "dpo"):
        result = json.loads((out / "eval" / f"{system}.json").read_text())
        assert result["scored_tool_call_turns"] > 0
