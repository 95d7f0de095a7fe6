"""Pair selection: chosen is the best error-free candidate or the gold; rejected are those at least
a margin below; deterministic and free of duplicates."""

import pytest

from ttpa_jax.tools.esm import score
from ttpa_jax.sample.pairs import select_pairs
from ttpa_jax.tools.calls import render

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
            },
        },
    }
]
GOLD = [{"name": "get_weather", "arguments": {"city": "Lyon", "days": 3}}]
GOLD_TEXT = render(GOLD)


def cand(city="Lyon", days=3, name="get_weather"):
    text = render([{"name": name, "arguments": {"city": city, "days": days}}])
    return text, score(text, GOLD, TOOLS)


def test_best_error_free_candidate_is_chosen():
    exact = cand()
    value = cand(days=4)  # 0.8
    typed = cand(days="3")  # 0.7
    wrong = cand(name="get_forecast")  # 0.1
    pairs = select_pairs([value, exact, typed, wrong], GOLD_TEXT, margin=0.25)
    assert pairs == [(exact[0], typed[0], 1.0, typed[1].score), (exact[0], wrong[0], 1.0, wrong[1].score)]


def test_gold_is_chosen_when_no_candidate_is_error_free():
    value, typed = cand(days=4), cand(days="3")
    pairs = select_pairs([value, typed], GOLD_TEXT, margin=0.2)
    assert pairs == [(GOLD_TEXT, value[0], 1.0, value[1].score), (GOLD_TEXT, typed[0], 1.0, typed[1].score)]
    assert value[1].score == pytest.approx(0.8)  # exactly one margin below: kept despite float rounding
    assert select_pairs([value, typed], GOLD_TEXT, margin=0.25) == [(GOLD_TEXT, typed[0], 1.0, typed[1].score)]


def test_no_duplicates_and_deterministic():
    exact, other_exact, value = cand(), cand(city="lyon"), cand(days=5)
    cands = [exact, value, other_exact, value, exact]
    pairs = select_pairs(cands, GOLD_TEXT, margin=0.1)
    assert pairs == [(exact[0], value[0], 1.0, value[1].score)]
    assert select_pairs(cands, GOLD_TEXT, margin=0.1) == pairs
    # A candidate equal to the gold text is never rejected against itself.
    assert select_pairs([(GOLD_TEXT, value[1])], GOLD_TEXT, margin=0.1) == []


def test_edge_cases():
    assert select_pairs([], GOLD_TEXT, margin=0.1) == []
    only_exact = [cand()]
    assert select_pairs(only_exact, GOLD_TEXT, margin=0.1) == []
    with pytest.raises(ValueError):
        select_pairs(only_exact, GOLD_TEXT, margin=0.0)
