"""``core.records``: a stage's --data as JSONL, a datasets directory (save_to_disk) or parquet file(s)
gives the same records, and errors name the row."""

from __future__ import annotations

import json

import datasets
import pytest
from tool_records import RECORDS

from ttpa_jax.core.conversation import normalize_preference, normalize_record
from ttpa_jax.core.jsonl import DataError
from ttpa_jax.core.records import data_hash, iter_numbered, iter_records


def _as_rows(records):
    """What a user's dataset holds: the same fields, with tool schemas and call arguments as JSON
    strings (OpenAI's form; their keys differ from row to row, which one Arrow schema cannot hold)."""
    def message(m):
        calls = [{**c, "function": {**c["function"], "arguments": json.dumps(c["function"]["arguments"])}}
                 if not isinstance(c["function"]["arguments"], str) else c for c in m.get("tool_calls", [])]
        return {**m, "tool_calls": calls} if calls else m
    return [{**r, "messages": [message(m) for m in r["messages"]], "tools": json.dumps(r["tools"])} for r in records]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("records")
    jsonl = root / "sft.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    ds = datasets.Dataset.from_list(_as_rows(RECORDS))
    ds.save_to_disk(str(root / "sft_ds"))
    half = len(RECORDS) // 2
    (root / "pq").mkdir()
    datasets.Dataset.from_list(_as_rows(RECORDS[:half])).to_parquet(str(root / "pq" / "a.parquet"))
    datasets.Dataset.from_list(_as_rows(RECORDS[half:])).to_parquet(str(root / "pq" / "b.parquet"))
    return root, jsonl


def test_every_form_gives_the_records_of_the_jsonl(sources):
    root, jsonl = sources
    expected = [normalize_record(r, at) for at, r in iter_records(jsonl)]
    assert len(expected) == len(RECORDS) >= 2
    for path in (root / "sft_ds", root / "pq", root / "pq" / "*.parquet"):
        got = [normalize_record(r, at) for at, r in iter_records(path)]
        assert got == expected, path
    assert [n for n, _, _ in iter_numbered(root / "pq")] == list(range(1, len(RECORDS) + 1))
    assert [at for at, _ in iter_records(root / "pq")][-1] == f"{root / 'pq' / 'b.parquet'}[row {len(RECORDS) - len(RECORDS) // 2 - 1}]"
    assert data_hash(root / "sft_ds") != data_hash(root / "pq") and len(data_hash(jsonl)) == 64


def test_preference_records_from_a_dataset(tmp_path):
    pair = {"prompt": [{"role": "user", "content": "Weather in Lyon?"}],
            "chosen": [{"role": "assistant", "content": "Sunny."}],
            "rejected": [{"role": "assistant", "content": "Rainy."}], "tools": "[]"}
    datasets.Dataset.from_list([pair]).save_to_disk(str(tmp_path / "pairs"))
    ((at, rec),) = list(iter_records(tmp_path / "pairs"))
    assert at == f"{tmp_path / 'pairs'}[row 0]"
    assert normalize_preference(rec, at)["chosen"][0]["content"] == "Sunny."


def test_errors_name_the_dataset_and_row(tmp_path):
    bad = [{**_as_rows(RECORDS[:1])[0]}, {**_as_rows(RECORDS[:1])[0], "tools": "[{not json"}]
    datasets.Dataset.from_list(bad).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(DataError, match=r"bad\[row 1\]: tools: a string that is not JSON"):
        list(iter_records(tmp_path / "bad"))
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_list(_as_rows(RECORDS[:1]))})
    splits.save_to_disk(str(tmp_path / "splits"))
    with pytest.raises(DataError, match=r"a DatasetDict with splits \['train'\]"):
        list(iter_records(tmp_path / "splits"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="neither a datasets directory"):
        list(iter_records(tmp_path / "empty"))
    with pytest.raises(DataError, match="no such file"):
        list(iter_records(tmp_path / "missing.jsonl"))


def test_the_stages_read_a_dataset_as_they_read_the_jsonl(sources, tiny_model_dir, tmp_path):
    from ttpa_jax.evaluate.evaluator import read_records
    from ttpa_jax.sample.candidates import read_prompts
    from ttpa_jax.text.prompts import load_tokenizer
    from ttpa_jax.train.dataset import prepare

    root, jsonl = sources
    tok = load_tokenizer(tiny_model_dir)
    assert read_records(root / "sft_ds") == read_records(jsonl)  # evaluate --data
    prompts = [read_prompts(src, tok, 16, 2048)[1] for src in (jsonl, root / "pq")]  # sample --data
    assert [(p.record_id, p.turn, p.gold) for p in prompts[0]] == [(p.record_id, p.turn, p.gold) for p in prompts[1]]
    assert len(prompts[0]) >= 2
    stats = [prepare(src, tiny_model_dir, tmp_path / name, kind="sft", progress=False)[1]  # train --data
             for name, src in (("jsonl", jsonl), ("ds", root / "sft_ds"))]
    assert stats[0].written == stats[1].written == len(RECORDS) and stats[0].tokens == stats[1].tokens
    assert stats[0].fingerprint != stats[1].fingerprint
