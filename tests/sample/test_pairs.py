"""Pair selection on token ids (best sampled side chosen, error-free or not; gold below a threshold;
no identical pairs), the records built from scored candidates, the preference example DPO trains
on, where tokens fall in a call, and the audit."""

import numpy as np
import pytest
from tool_records import RECORDS, TOOLS, build_tiny_model_dir

from ttpa_jax.core.jsonl import DataError
from ttpa_jax.decode.branching import call_steps
from ttpa_jax.sample.audit import audit_path, build_audit, divergence_class, format_audit, pair_meta
from ttpa_jax.sample.candidates import Candidate, Prompt
from ttpa_jax.sample.pairs import GOLD, Pair, no_pair_reason, pair_kind, pair_sides, select_anchored, select_pairs
from ttpa_jax.sample.records import pair_records
from ttpa_jax.text.render import preference_example
from ttpa_jax.text.spans import call_spans, char_locations
from ttpa_jax.tools import esm
from ttpa_jax.tools.calls import render

GOLD_IDS = (1, 2, 3)


def test_best_sampled_candidate_is_chosen_error_free_or_not():
    cands = [((1, 5), 0.8), ((1, 6), 0.9), ((1, 7), 0.7), ((2,), 0.1)]
    pairs = select_pairs(cands, margin=0.15, gold=GOLD_IDS, gold_below=0.8)
    assert pairs == [Pair(1, 2, 0.9, 0.7), Pair(1, 3, 0.9, 0.1)]  # 0.9 is not error-free, still chosen
    assert select_pairs(cands, margin=0.1, gold=GOLD_IDS)[0] == Pair(1, 0, 0.9, 0.8)  # one margin below: kept


def test_gold_is_chosen_only_below_the_threshold():
    cands = [((1, 5), 0.7), ((1, 6), 0.3)]
    assert select_pairs(cands, margin=0.2, gold=GOLD_IDS, gold_below=0.8) == [Pair(GOLD, 0, 1.0, 0.7),
                                                                              Pair(GOLD, 1, 1.0, 0.3)]
    assert select_pairs(cands, margin=0.2, gold=GOLD_IDS, gold_below=0.7) == [Pair(0, 1, 0.7, 0.3)]
    assert select_pairs(cands, margin=0.2, gold=None) == [Pair(0, 1, 0.7, 0.3)]  # no gold: sampled only
    # A candidate with the gold's ids is never rejected against the gold.
    assert select_pairs([(GOLD_IDS, 0.5)], margin=0.1, gold=GOLD_IDS) == []


def test_deduplication_on_token_ids_and_edge_cases():
    cands = [((1, 5), 1.0), ((1, 6), 0.5), ((1, 5), 1.0), ((1, 6), 0.5), ((1, 7), 0.5)]
    assert select_pairs(cands, margin=0.1) == [Pair(0, 1, 1.0, 0.5), Pair(0, 4, 1.0, 0.5)]
    assert select_pairs(cands, margin=0.1) == select_pairs(cands, margin=0.1)
    assert select_pairs([], margin=0.1) == [] and select_pairs([((1,), 1.0)], margin=0.1) == []
    with pytest.raises(ValueError):
        select_pairs(cands, margin=0.0)
    assert pair_kind("gold", "greedy") == "gold_chosen" and pair_kind("branch", "greedy") == "sampled_chosen"
    assert pair_kind("gold", "anchored") == "gold_anchored" and pair_kind("sample", "sample") == "sampled_chosen"
    assert pair_sides("branch", "greedy") == "greedy_vs_branch" == pair_sides("greedy", "branch")
    assert pair_sides("branch", "branch") == "branch_vs_branch" and pair_sides("sample", "sample") == "sample_vs_sample"
    assert pair_sides("gold", "anchored") == "gold_vs_anchored"
    assert no_pair_reason(1, 1, 0, "tps") == "no_branch_point"
    assert no_pair_reason(3, 1, 1, "tps") == "duplicate_candidates"
    assert no_pair_reason(3, 3, 1, "tps") == "scores_within_margin"


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from ttpa_jax.text.prompts import load_tokenizer

    return load_tokenizer(build_tiny_model_dir(tmp_path_factory.mktemp("tiny")))


def _prompt(tok):
    from ttpa_jax.text.prompts import encode_chat

    gold = [{"name": "get_weather", "arguments": {"city": "Lyon", "unit": "celsius"}}]
    messages = RECORDS[0]["messages"][:1]
    return Prompt("r1", 1, messages, TOOLS, gold, encode_chat(tok, messages, TOOLS))


def test_pair_records_keep_sampled_ids_mark_gold_and_deduplicate(tok):
    prompt = _prompt(tok)
    good = render(prompt.gold, "qwen")
    wrong = render([{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}], "qwen")
    branch = {"position": 2, "gap": 0.03, "token_id": 20, "rank": 1, "prob": 0.4, "location": "value"}
    cands = [Candidate(good, [10, 11, 12, 13], "greedy"), Candidate(wrong, [10, 11, 20, 21], "branch", branch),
             Candidate(wrong, [10, 11, 20, 21], "branch", branch),  # the same ids again: one pair only
             Candidate("no call here", [30], "branch", {**branch, "position": 0, "location": "outside"})]
    scores = [esm.score(c.text, prompt.gold, TOOLS) for c in cands]
    records = pair_records(prompt, cands, scores, tokenizer=tok, mode="tps", margin=0.1, gold_below=0.8)
    assert len(records) == 2
    first, second = records
    assert first["chosen_source"] == "sampled" and first["meta"]["pair_kind"] == "sampled_chosen"
    assert first["meta"]["pair_sides"] == "greedy_vs_branch" and first["meta"]["chosen_longer"] is None  # 4 tokens each
    assert first["chosen_ids"] == [10, 11, 12, 13] and first["rejected_ids"] == [10, 11, 20, 21]
    assert first["prompt_ids"] == prompt.ids and first["rejected"][0] == {"role": "assistant", "content": wrong}
    assert first["meta"]["branch_position"] == 2 == first["meta"]["shared_prefix_tokens"]
    assert first["meta"]["branch_location"] == "value" and first["meta"]["rejected_errors"]["param_value"] == 1
    assert second["meta"]["shared_prefix_tokens"] == 0 and second["meta"]["rejected_errors"]["format"] == 1
    # Nothing scores 0.8 or more: the gold call is chosen, its ids rendered after the prompt.
    gold_records = pair_records(prompt, cands[1:], scores[1:], tokenizer=tok, mode="tps", margin=0.1, gold_below=0.95)
    assert [r["chosen_source"] for r in gold_records] == ["gold", "gold"]
    assert gold_records[0]["meta"]["pair_kind"] == "gold_chosen"
    assert gold_records[0]["chosen"][0]["tool_calls"][0]["function"]["arguments"] == {"city": "Lyon", "unit": "celsius"}
    ex = preference_example(tok, {**gold_records[0], "chosen_ids": None}, 512, "drop", "x")  # re-rendered
    assert ex.features["chosen_ids"][len(prompt.ids):].tolist() == gold_records[0]["chosen_ids"]


def test_preference_example_trains_on_stored_ids(tok):
    prompt = _prompt(tok)
    msg = {"role": "assistant", "content": "hi"}
    rec = {"prompt": prompt.messages, "chosen": [msg], "rejected": [msg], "tools": TOOLS,
           "prompt_ids": prompt.ids, "chosen_ids": [5, 6, 7], "rejected_ids": [5, 9]}
    ex = preference_example(tok, rec, 512, "drop", "pairs.jsonl:3")
    P = len(prompt.ids)
    assert ex.features["chosen_ids"].tolist() == prompt.ids + [5, 6, 7]
    assert ex.features["rejected_ids"].tolist() == prompt.ids + [5, 9]
    assert ex.features["rejected_weights"].tolist() == [0.0] * P + [1.0, 1.0]
    plain = preference_example(tok, {k: rec[k] for k in ("prompt", "chosen", "rejected", "tools")}, 512, "drop")
    assert plain.features["chosen_ids"].tolist() == plain.features["rejected_ids"].tolist()  # TRL records: rendered
    assert plain.features["chosen_ids"][:P].tolist() == prompt.ids
    with pytest.raises(DataError, match="pairs.jsonl:3: prompt_ids differ"):
        preference_example(tok, {**rec, "prompt_ids": prompt.ids[1:]}, 512, "drop", "pairs.jsonl:3")
    with pytest.raises(DataError, match="pairs.jsonl:3: chosen_ids: expected a list"):
        preference_example(tok, {**rec, "chosen_ids": [1, "a"]}, 512, "drop", "pairs.jsonl:3")


CALL = 'Sure <tool_call>\n{"name": "get_weather", "arguments": {"city": "Lyon", "days": 3}}\n</tool_call> ok'


def test_where_characters_fall_in_a_call():
    locs = char_locations(CALL)

    def text_of(kind):
        return "".join(c for c, loc in zip(CALL, locs) if loc == kind)

    assert text_of("name") == '"get_weather"' and text_of("key") == '"city""days"'
    assert text_of("value") == '"Lyon"3' and text_of("outside") == "Sure  ok"
    assert call_spans('x {"name": "a", "parameters": {"k": "v"}} y') == [(2, 41)]  # JSON calls without tags
    assert char_locations('{"name": "a", "parameters": {"k": "v"}}')[31] == "key"
    assert call_spans("no call") == [] and call_spans("<tool_call>\n{") == [(0, 13)]  # unclosed: to the end
    assert call_spans('<tool_response>\n{"temp": 14}') == []  # JSON that is no call


def test_call_steps_mark_only_tokens_inside_the_call(tok):
    ids = tok.encode(CALL, add_special_tokens=False) + [tok.convert_tokens_to_ids("<|im_end|>")]
    mask = call_steps(tok, ids)
    inside = [tok.decode(ids[i:i + 1]) for i in range(len(ids)) if mask[i]]
    outside = [tok.decode(ids[i:i + 1]) for i in range(len(ids)) if not mask[i]]
    assert "".join(inside).startswith("<tool_call>") and "".join(inside).rstrip().endswith("</tool_call>")
    assert "Sure" in "".join(outside) and outside[-1] == "<|im_end|>" and not mask[-1]


def test_audit_counts_and_path(tmp_path):
    meta = {"turn_kind": "tool_call", "branch_location": "value", "shared_prefix_tokens": 4}

    def rec(source, kind, rejected_score, shared, divergence, longer, **more):
        return {"chosen_source": source, "meta": {**meta, "pair_kind": kind, "chosen_score": 1.0, "rejected_score":
                                                  rejected_score, "shared_prefix_tokens": shared, "divergence":
                                                  divergence, "chosen_longer": longer, **more}}

    records = [rec("sampled", "sampled_chosen", 0.8, 4, "value", None, pair_sides="greedy_vs_branch"),
               rec("gold", "gold_chosen", 0.0, 0, "other", True, branch_location=None, pair_sides="gold_vs_greedy"),
               rec("gold", "gold_anchored", 0.5, 9, "close_vs_continue", False, pair_sides="gold_vs_anchored"),
               rec("gold", "gold_anchored", 0.3, 130, "value", True, pair_sides="gold_vs_anchored",
                   turn_kind="tool_call")]
    prompts = [{"id": "a", "turn": 1, "kind": "tool_call", "branch_points": 2, "branch_locations": ["value", "name"],
                "pairs": 4, "reason": None},
               {"id": "b", "turn": 3, "kind": "answer", "branch_points": 0, "branch_locations": [], "pairs": 0,
                "reason": "no_branch_point"}]
    a = build_audit(records, prompts, {"answer_not_judgeable": 1})
    assert a["pair_kinds"] == {"sampled_chosen": 1, "gold_anchored": 2, "gold_chosen": 1}
    assert list(a["pair_kinds"]) == ["sampled_chosen", "gold_anchored", "gold_chosen"]  # always all three, in order
    assert a["pair_sides"] == {"gold_vs_anchored": 2, "gold_vs_greedy": 1, "greedy_vs_branch": 1}
    assert a["chosen_source"] == {"gold": 3, "sampled": 1}
    assert a["divergence"] == {"tool_name": 0, "key": 0, "value": 2, "close_vs_continue": 1, "answer": 0, "other": 1}
    assert a["divergence_by_kind"]["gold_anchored"] == {"tool_name": 0, "key": 0, "value": 1, "close_vs_continue": 1,
                                                        "answer": 0, "other": 0}
    assert a["divergence_by_kind"]["gold_chosen"]["other"] == 1
    assert sum(a["divergence_by_kind"]["sampled_chosen"].values()) == 1
    assert a["chosen_longer"] == {"longer": 2, "shorter": 1, "equal": 1}
    assert a["branch_locations"] == {"name": 1, "value": 1} and a["pair_branch_locations"] == {"value": 3}
    assert a["score_gaps"]["histogram"]["[0.2, 0.3)"] == 1 and a["score_gaps"]["histogram"]["[0.75, 1]"] == 1
    assert a["prompts_without_pair"] == {"count": 1, "by_reason": {"no_branch_point": 1},
                                         "prompts": [{"id": "b", "turn": 3, "kind": "answer",
                                                      "reason": "no_branch_point"}]}
    assert a["shared_prefix_tokens"] == {
        "min": 0, "q1": 3.0, "median": 6.5, "q3": 39.25, "max": 130,
        "histogram": {"0": 1, "1-3": 0, "4-7": 1, "8-15": 1, "16-31": 0, "32-63": 0, "64-127": 0, "128+": 1}}
    text = format_audit(a)
    assert "pairs by kind: sampled_chosen 1 (25%), gold_anchored 2 (50%), gold_chosen 1 (25%)" in text
    assert "sides first differ at: value 2 (50%), close_vs_continue 1 (25%), other 1 (25%)" in text
    assert "shared completion prefix (tokens): median 6.5 (quartiles 3-39.25, min 0, max 130)" in text
    assert "answer_not_judgeable 1" in text
    assert "chosen completion longer than rejected: longer 2, shorter 1, equal 1" in text
    assert audit_path(tmp_path / "pairs.jsonl") == tmp_path / "pairs.audit.json"
    assert np.isclose(a["score_gaps"]["min"], 0.2)
    empty = build_audit([], prompts, {})
    assert empty["pair_kinds"] == {"sampled_chosen": 0, "gold_anchored": 0, "gold_chosen": 0}
    assert empty["shared_prefix_tokens"]["histogram"]["0"] == 0 and "median" not in empty["shared_prefix_tokens"]
    assert "pairs by kind: none" in format_audit(empty)


ARGS = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lyon"}}\n</tool_call>'


@pytest.mark.parametrize("chosen,rejected,expected", [
    (ARGS, ARGS.replace("get_weather", "get_time"), "tool_name"),
    (ARGS, ARGS.replace('"city"', '"town"'), "key"),
    (ARGS, ARGS.replace('"Lyon"', '"Paris"'), "value"),
    (ARGS, ARGS.replace('"Lyon"', '"Lyons"'), "value"),  # the chosen side's closing quote is in the value
    (ARGS.replace('"Lyon"', '"Lyon, FR"'), ARGS, "value"),  # a comma inside a value continues nothing
    (ARGS, ARGS.replace('"Lyon"}', '"Lyon", "unit": "celsius"}'), "close_vs_continue"),  # chosen closes
    (ARGS.replace('"Lyon"}', '"Lyon", "unit": "celsius"}'), ARGS, "close_vs_continue"),  # chosen continues
    (ARGS.replace('"Lyon"}', '"Lyon"\n}'), ARGS.replace('"Lyon"}', '"Lyon",\n"unit": "c"}'), "close_vs_continue"),
    (ARGS.replace('"Lyon"}', '{"a": 1}}'), ARGS.replace('"Lyon"}', '{"a": 1, "b": 2}}'), "value"),  # nested: a value
    ("Sure. " + ARGS, ARGS, "other"),  # text before the call
    (ARGS, ARGS.replace("{\"name", "{ \"name"), "other"),  # syntax
    (ARGS, ARGS + "<|im_end|>", "other"),  # the call done, one side goes on
    (ARGS, ARGS, "other"),
])
def test_divergence_class_of_hand_made_pairs(chosen, rejected, expected):
    assert divergence_class(chosen, rejected) == expected
    assert divergence_class(chosen, rejected, "answer") == "answer"


def test_pair_meta_reads_the_token_ids(tok):
    texts = (ARGS, ARGS.replace('"Lyon"}', '"Lyon", "unit": "c"}'))
    short, long = (tok.encode(t, add_special_tokens=False) for t in texts)
    assert pair_meta(tok, short, long, "tool_call") == {"divergence": "close_vs_continue", "chosen_longer": False}
    assert pair_meta(tok, long, short, "tool_call") == {"divergence": "close_vs_continue", "chosen_longer": True}
    assert pair_meta(tok, short, short[:-1] + [short[0]], "answer") == {"divergence": "answer", "chosen_longer": None}


def test_gold_anchored_pairs_respect_the_margin():
    cands = [((1, 5), 0.95), ((1, 6), 0.9), ((1, 6), 0.0), (GOLD_IDS, 0.2), ((2,), 0.3)]
    assert select_anchored(cands, margin=0.1, gold=GOLD_IDS) == [Pair(GOLD, 1, 1.0, 0.9), Pair(GOLD, 4, 1.0, 0.3)]
    assert select_anchored(cands, margin=0.7, gold=GOLD_IDS) == [Pair(GOLD, 4, 1.0, 0.3)]  # 1.0 - 0.3: just enough
    assert select_anchored(cands, margin=0.75, gold=GOLD_IDS) == []
    assert no_pair_reason(2, 2, 1, "tps", anchored=True) == "scores_within_margin"
    assert no_pair_reason(0, 0, 1, "tps", anchored=True) == "branches_cut_by_stop"
    assert no_pair_reason(0, 0, 0, "tps", anchored=True) == "no_branch_point"
