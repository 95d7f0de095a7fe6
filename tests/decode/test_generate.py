"""``python -m ttpa_jax.generate`` and ``generate_completions`` on a tiny model directory; stop
strings on the host; the too-long prompt error."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tool_records import RECORDS, TOOLS, build_tiny_model_dir, write_jsonl

import ttpa_jax
from ttpa_jax.decode.generate import complete, generate_completions, main
from ttpa_jax.text.detokenize import finish, truncate_at_stop
from ttpa_jax.text.prompts import encode_chat, load_tokenizer

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = [
    {"id": "chat", "messages": RECORDS[0]["messages"][:1], "tools": TOOLS},
    {"text": "What's the weather in"},
    {"id": 7, "messages": [{"role": "user", "content": "Say hi."}]},
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = build_tiny_model_dir(tmp_path_factory.mktemp("tiny"))
    return d, ttpa_jax.load_pretrained(d), load_tokenizer(d)


def test_generate_cli_on_chat_and_text_prompts(tiny, tmp_path):
    model_dir, model, tok = tiny
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "ttpa_jax.generate", "--model", str(model_dir), "--prompts", str(prompts),
         "--out", str(out), "--decoding.max-new-tokens", "6", "--decoding.batch-size", "2", "--no-progress"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "3 completions written" in proc.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2]
    assert rows[0]["id"] == "chat" and "id" not in rows[1] and rows[2]["id"] == 7
    chat_ids = encode_chat(tok, PROMPTS[0]["messages"], TOOLS)
    assert tok.decode(chat_ids).endswith("<|im_start|>assistant\n") and "get_weather" in tok.decode(chat_ids)
    assert rows[0]["prompt_tokens"] == len(chat_ids)
    assert rows[1]["prompt_tokens"] == len(tok("What's the weather in")["input_ids"])
    for r in rows:
        assert 1 <= len(r["token_ids"]) <= 6 and r["finish_reason"] in ("eos", "length")
        assert r["completion"] == tok.decode(r["token_ids"], skip_special_tokens=True)
    # The Python entry, with the model already loaded, gives the same greedy completions.
    texts = generate_completions(None, PROMPTS, max_new_tokens=6, batch_size=2, model=model, tokenizer=tok)
    assert texts == [r["completion"] for r in rows]


def test_stop_string_ends_the_completion(tiny):
    _, model, tok = tiny
    ids = [tok("What's the weather in")["input_ids"], encode_chat(tok, PROMPTS[0]["messages"], TOOLS)]
    free = complete(model, tok, ids, max_new_tokens=8, batch_size=2, eos_ids=())
    stop = tok.decode(free[0].token_ids[2:4])  # text the model writes at steps 2-3
    assert stop
    stopped = complete(model, tok, ids, max_new_tokens=8, batch_size=2, eos_ids=(), stop=[stop])
    first = stopped[0]
    end = free[0].text.find(stop) + len(stop)
    assert first.finish_reason == "stop" and first.text == free[0].text[:end]
    assert len(first.token_ids) <= 4 and first.token_ids == free[0].token_ids[: len(first.token_ids)]


def test_truncate_at_stop_on_tokens(tiny):
    _, _, tok = tiny
    ids = tok.encode('<tool_call>\n{"name": "get_time"}\n</tool_call>\nmore text', add_special_tokens=False)
    kept, text, stopped = truncate_at_stop(tok, ids, ["</tool_call>"])
    assert stopped and text.endswith("</tool_call>") and "more" not in text
    assert kept[-1] == tok.convert_tokens_to_ids("</tool_call>") and kept == ids[: len(kept)]
    # A stop string inside a token: the text ends at the stop string, the ids at that token.
    kept, text, stopped = truncate_at_stop(tok, ids, ['"get_ti'])
    assert stopped and text == '<tool_call>\n{"name": "get_ti'
    assert tok.decode(kept).startswith(text) and tok.decode(kept[:-1]) in text
    assert finish(tok, ids + [1], [1], []).finish_reason == "eos"
    assert finish(tok, ids, [1], []).finish_reason == "length"


def test_too_long_and_malformed_prompts_name_the_line(tiny, tmp_path, capsys):
    model_dir, _, _ = tiny
    long_text = "weather " * 3000  # beyond tiny-qwen2's 2048 positions
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"text": "hi"}, {"text": long_text}])
    assert main(["--model", str(model_dir), "--prompts", str(prompts), "--out", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert f"{prompts}:2: prompt is" in err and "max_position_embeddings 2048" in err
    prompts = write_jsonl(tmp_path / "q.jsonl", [{"text": "hi"}, {"prompt": "hi"}])
    assert main(["--model", str(model_dir), "--prompts", str(prompts), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert f"{prompts}:2: a prompt needs" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_batches_keep_input_order_and_pad_the_last_to_a_power_of_two():
    from ttpa_jax.decode.batching import decode_in_batches

    prompts = [[n] * n for n in (5, 2, 9, 4, 7, 3, 8, 6, 1, 10, 11)]  # 11 prompts: batches of 8, then 3 -> 4 rows
    shapes = []

    def decode_batch(batch):
        shapes.append((len(batch.rows), batch.ids.shape[0]))
        assert (batch.lengths == [len(prompts[r]) for r in batch.rows]).all()
        assert (batch.mask.sum(1)[batch.conv] == batch.lengths).all()  # no prompt is a prefix of another
        return [len(prompts[r]) for r in batch.rows]

    assert decode_in_batches(prompts, 8, 0, decode_batch) == [len(p) for p in prompts]
    assert shapes == [(8, 8), (4, 4)]
    shapes.clear()
    decode_in_batches(prompts[:9], 8, 0, decode_batch)
    assert shapes == [(8, 8), (1, 1)]


def test_prompts_that_are_prefixes_of_another_share_its_conversation():
    from ttpa_jax.decode.batching import decode_in_batches, prefix_roots

    # Two conversations of three turns each, one lone prompt, and a duplicate.
    a, b = [1, 2, 3, 4, 5, 6, 7], [1, 2, 9, 9, 9]
    prompts = [a[:3], b[:3], a[:5], [4, 4], b, a, [1, 2, 9], [4, 4]]
    assert prefix_roots(prompts) == [5, 4, 5, 3, 4, 5, 4, 7]
    seen = []

    def decode_batch(batch):
        T = batch.ids.shape[1]
        convs = [batch.ids[u, T - int(batch.mask[u].sum()):].tolist() for u in range(batch.ids.shape[0])]
        for r, u, n in zip(batch.rows, batch.conv, batch.lengths):
            assert convs[u][:n] == prompts[r]
        seen.append((len(batch.rows), len(convs)))
        return [tuple(prompts[r]) for r in batch.rows]

    assert decode_in_batches(prompts, 4, 0, decode_batch) == [tuple(p) for p in prompts]
    # Families by their longest prompt: [4, 4] and its duplicate, b's, a's; 4 families in 8 prompts: 2
    # conversations per batch of 4. The two [4, 4] fill the first batch's conversations (2 rows, padded to
    # 4), b's three turns and a's first the second, a's last two the last batch (2 rows).
    assert seen == [(4, 2), (4, 2), (2, 2)]
