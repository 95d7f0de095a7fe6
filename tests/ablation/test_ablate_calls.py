"""ablation.calls: arguments per call against SFT's and in the DPO pairs, from run directories."""

from __future__ import annotations

import json

from ttpa_jax.ablation import calls as C


def call(name, **args):
    return f'<tool_call>{json.dumps({"name": name, "arguments": args})}</tool_call>'


def test_n_args_reads_text_and_openai_messages():
    assert C.n_args(call("f", a=1, b=2)) == 2
    assert C.n_args({"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "id": "c0", "function": {"name": "f", "arguments": {"a": 1}}}]}) == 1
    assert C.n_args({"role": "assistant", "content": call("f")}) == 0
    assert C.n_args("no call here") is None
    assert C.n_args(call("f", a=1) + call("g")) is None  # two calls: not one call's length
    assert C.n_args('<tool_call>{"name": "f", "arguments": {"a": </tool_call>') is None


def write_eval(path, predictions):
    path.parent.mkdir(parents=True, exist_ok=True)
    per_turn = [{"id": f"r{i}", "turn": 1, "kind": "tool_call", "prediction": p} for i, p in enumerate(predictions)]
    per_turn.append({"id": "r9", "turn": 2, "kind": "answer", "prediction": "done"})
    path.write_text(json.dumps({"per_turn": per_turn}))


def test_measure_counts_shorter_and_longer_calls_and_pair_sides(tmp_path):
    root = tmp_path / "seed0"
    write_eval(root / "sft" / "eval" / "sft.json", [call("f", a=1, b=2), call("f", a=1), "text", call("f", a=1)])
    write_eval(root / "ttpa" / "eval" / "ttpa.json", [call("f", a=1), call("f", a=1), call("f"), call("f", a=1, b=2)])
    write_eval(root / "zero-shot" / "eval" / "zero-shot.json", ["text"] * 4)
    pairs = [{"chosen": [{"role": "assistant", "content": call("f", a=1)}],
              "rejected": [{"role": "assistant", "content": call("f", a=1, b=2)}]},
             {"chosen": [{"role": "assistant", "content": call("f", a=1)}],
              "rejected": [{"role": "assistant", "content": "text"}]}]
    (root / "ttpa" / "data").mkdir(parents=True)
    (root / "ttpa" / "data" / "pairs.jsonl").write_text("\n".join(map(json.dumps, pairs)) + "\n")
    out = C.measure(tmp_path, seeds=(0, 1))  # seed 1 has no runs: skipped
    assert out["seeds"] == [0] and set(out["systems"]) == {"ttpa"}
    ttpa = out["systems"]["ttpa"]
    # turns where both parse: r0 (1 vs 2: fewer), r1 (equal), r3 (2 vs 1: more); r2's SFT output is text
    assert (ttpa["turns"], ttpa["fewer"], ttpa["more"]) == (3, 1, 1)
    assert (ttpa["pairs"], ttpa["chosen_fewer"], ttpa["chosen_more"]) == (1, 1, 0)
    table = C.lines(out)
    assert any(line.startswith("| ttpa | 1 of 3 | 1 of 3 | 1 of 1 | 0 of 1 |") for line in table)


def test_calls_command_without_runs_is_a_clear_error(tmp_path, capsys):
    from ttpa_jax.ablation import cli as ablate
    assert ablate.main(["calls", "--out", str(tmp_path / "none"), "--results-dir", str(tmp_path)]) == 2
    assert "no seed<k>/sft/eval/sft.json" in capsys.readouterr().err
    assert not (tmp_path / "calls.json").exists()
