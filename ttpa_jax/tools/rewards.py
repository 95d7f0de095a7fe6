"""Rewards for an RL stage: pure functions ``(prediction, gold_calls, tools) -> float``.

Every reward here has the same signature, so a trainer can take any of them (or a weighted
combination) by name from ``REWARDS``:

``reward(prediction, gold_calls, tools, *, format="auto") -> float``

prediction:  the model's raw completion text, or calls already parsed (``{"name", "arguments"}``
             dicts, or anything ``calls.parse_value`` reads).
gold_calls:  ``{"name", "arguments"}`` dicts; argument values follow ``gold_values``'s convention
             (lists of acceptable values, ``""`` = may be left out). Empty: no call is expected.
tools:       OpenAI tool schemas or bare function dicts (``None``: no schemas known).
format:      how to parse text (``qwen``, ``llama`` or ``auto``), as in ``calls.parse``.

Rewards never raise on the prediction.

``tl_reward`` is TL-Training's error-category reward (``test_answer_for_reward`` in its
``ppo_trainer.py``), checked in this order, the first that applies decides (``TL_REWARDS``):

====================================================  ======
no parsable call / a tool that is not among the tools   -2.0
a real tool, but not the gold one                       -1.5
keys hallucinated + redundant + missing                 -1.8
keys hallucinated + missing, or hallucinated + redundant -1.3
keys redundant + missing                                -1.0
a key hallucinated (not a parameter of the tool)        -0.8
a key redundant (a parameter the gold call lacks)       -0.5
a key missing (a gold key the call lacks)               -0.5
right keys, a wrong value (a wrong type counts here)    -0.25
exact                                                   +1.0
====================================================  ======

Each key category is "any key of that kind", so several missing keys cost the same as one, and a
key error hides a value error. TL-Training's code reads one call per turn. For parallel calls we
match predicted to gold calls name first (``assignment.match_name_first``, the same matching as
ESM), score each pair by the table, an extra or a missing call as a wrong tool (-1.5; an extra call
to an unknown tool -2.0), and the turn gets the lowest of these: one bad call makes the turn bad,
as one bad call makes it fail when executed. With one call on each side this is the code's rule.

``esm_reward`` is the ESM score (``esm.score``), in [0, 1].

For the RL stage: ``format_reward`` (1 when the turn holds parsable calls and nothing malformed),
``answer_reward`` (the share of the values the tools returned that the final answer mentions), and
``parse_reward_spec``, which reads ``--reward`` (``esm``, ``esm+format``,
``0.5*esm+0.5*tl+0.2*format``) into a weighted sum of ``COMPONENTS``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ttpa_jax.core.conversation import is_error_feedback
from ttpa_jax.tools.assignment import match_name_first
from ttpa_jax.tools.calls import Format, normalize_call, parse, parse_value
from ttpa_jax.tools.esm import ErrorWeights, score, tools_by_name
from ttpa_jax.tools.gold_values import matches_gold, may_omit, property_schema
from ttpa_jax.tools.return_values import mentions, result_values

Prediction = str | Sequence[Any] | Any
Reward = Callable[..., float]

UNPARSABLE = -2.0
HALLUCINATED_TOOL = -2.0
WRONG_TOOL = -1.5
WRONG_VALUE = -0.25
EXACT = 1.0
# The key categories present in a call (hallucinated, redundant, missing) -> reward.
KEY_REWARDS: dict[frozenset[str], float] = {
    frozenset({"hallucinated", "redundant", "missing"}): -1.8,
    frozenset({"hallucinated", "missing"}): -1.3,
    frozenset({"hallucinated", "redundant"}): -1.3,
    frozenset({"redundant", "missing"}): -1.0,
    frozenset({"hallucinated"}): -0.8,
    frozenset({"redundant"}): -0.5,
    frozenset({"missing"}): -0.5,
}
TL_REWARDS = {
    "unparsable": UNPARSABLE,
    "hallucinated_tool": HALLUCINATED_TOOL,
    "wrong_tool": WRONG_TOOL,
    **{"+".join(sorted(k)): v for k, v in KEY_REWARDS.items()},
    "wrong_value": WRONG_VALUE,
    "exact": EXACT,
}


def key_errors(pred: Mapping[str, Any], gold: Mapping[str, Any], fn: Mapping[str, Any] | None) -> frozenset[str]:
    """The key categories of a call to the gold tool: ``hallucinated`` (a key that is not a
    parameter of the tool), ``redundant`` (a parameter the gold call does not use), ``missing`` (a
    gold key the call lacks, unless the gold lets it be left out). Without a schema for the tool
    (``fn`` is ``None``) no key counts as hallucinated or redundant, as in TL-Training's code.
    A key the gold call uses counts as a parameter even where the schema lacks it."""
    args, gold_args = pred["arguments"], gold["arguments"]
    schema = (fn or {}).get("parameters")
    schema = schema if isinstance(schema, dict) else {}
    kinds = set()
    if fn is not None:
        props = schema.get("properties")
        declared = set(props) if isinstance(props, dict) else set()
        declared |= set(gold_args)
        if any(k not in declared for k in args):
            kinds.add("hallucinated")
        if any(k in declared and k not in gold_args for k in args):
            kinds.add("redundant")
    if any(k not in args and not may_omit(g, property_schema(schema, k)) for k, g in gold_args.items()):
        kinds.add("missing")
    return frozenset(kinds)


def tl_call_reward(pred: Mapping[str, Any], gold: Mapping[str, Any], tools: Mapping[str, Mapping[str, Any]]) -> float:
    """TL-Training's reward of one predicted call against one gold call (both normalised
    ``{"name", "arguments"}``); ``tools`` by name (``esm.tools_by_name``)."""
    name = pred["name"]
    if name != gold["name"]:
        return HALLUCINATED_TOOL if name not in tools else WRONG_TOOL
    fn = tools.get(name)
    kinds = key_errors(pred, gold, fn)
    if kinds:
        return KEY_REWARDS[kinds]
    schema = (fn or {}).get("parameters")
    schema = schema if isinstance(schema, dict) else {}
    gold_args = gold["arguments"]
    for key, value in pred["arguments"].items():
        if not matches_gold(value, gold_args[key], property_schema(schema, key)):
            return WRONG_VALUE
    return EXACT


def _parsed(prediction: Prediction, format: Format):
    return parse(prediction, format) if isinstance(prediction, str) else parse_value(prediction)


def tl_reward(prediction: Prediction, gold_calls: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None,
              *, format: Format = "auto") -> float:
    """TL-Training's error-category reward of one assistant turn (see the module doc)."""
    parsed = _parsed(prediction, format)
    gold = [normalize_call(g) for g in gold_calls]
    pred = parsed.calls
    if parsed.errors:
        return UNPARSABLE
    if not pred:
        return EXACT if not gold else UNPARSABLE
    table = tools_by_name(tools)

    def reward(i: int | None, j: int | None) -> float:
        if i is None:
            return WRONG_TOOL  # a gold call with no predicted call
        if j is None:  # an extra call
            return HALLUCINATED_TOOL if pred[i]["name"] not in table else WRONG_TOOL
        return tl_call_reward(pred[i], gold[j], table)

    matches = match_name_first([c["name"] for c in pred], [g["name"] for g in gold], lambda i, j: EXACT - reward(i, j))
    return min(reward(i, j) for i, j in matches)


def esm_reward(prediction: Prediction, gold_calls: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None,
               *, format: Format = "auto", weights: ErrorWeights | Mapping[str, float] | None = None) -> float:
    """The ESM score of one assistant turn as a reward, in [0, 1] (``esm.score``)."""
    return score(prediction, gold_calls, tools, weights=weights, format=format).score


REWARDS: dict[str, Reward] = {"tl": tl_reward, "esm": esm_reward}


# --------------------------------------------------------------------------- the RL stage's terms
def format_reward(prediction: Prediction, gold_calls: Sequence[Mapping[str, Any]] = (),
                  tools: Sequence[Mapping[str, Any]] | None = None, *, format: Format = "auto") -> float:
    """1.0 when the turn holds at least one parsable call and no malformed block, else 0.0 (the
    structure only: names and arguments are the other terms' business)."""
    return 1.0 if _parsed(prediction, format).status == "ok" else 0.0


REWARDS["format"] = format_reward


def answer_reward(final_answer: str | None, tool_results: Sequence[str]) -> float:
    """The final answer's use of the returned values: the share of the scalar values in the tool
    results (error results left out) that the answer mentions (``return_values.mentions``); 0.0
    without an answer or without a returned value."""
    if not final_answer:
        return 0.0
    values = result_values([r for r in tool_results if not is_error_feedback(r)])
    if not values:
        return 0.0
    return sum(mentions(final_answer, v) for v in values) / len(values)


COMPONENTS = ("esm", "tl", "format", "answer")


@dataclasses.dataclass(frozen=True)
class RewardSpec:
    """A weighted sum of reward components, ``terms = ((weight, name), ...)`` (``parse_reward_spec``)."""

    terms: tuple[tuple[float, str], ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(n for _, n in self.terms))

    def total(self, components: Mapping[str, float]) -> float:
        return float(sum(w * components[n] for w, n in self.terms))


_TERM = re.compile(r"^\s*(?:([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*\*\s*)?([a-z_]+)\s*$")


def parse_reward_spec(text: str) -> RewardSpec:
    """``"esm"``, ``"esm+format"``, ``"0.5*esm+0.5*tl+0.2*format"`` -> RewardSpec; a term without a
    weight has weight 1. Raises ValueError naming the term it cannot read."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("--reward: empty; give e.g. esm, tl, esm+format or 0.5*esm+0.5*tl+0.2*format")
    terms = []
    for raw in text.split("+"):
        m = _TERM.match(raw)
        if not m:
            raise ValueError(f"--reward {text!r}: cannot read the term {raw.strip()!r} (write WEIGHT*NAME or NAME)")
        name = m.group(2)
        if name not in COMPONENTS:
            raise ValueError(f"--reward {text!r}: unknown component {name!r} (known: {', '.join(COMPONENTS)})")
        terms.append((float(m.group(1)) if m.group(1) else 1.0, name))
    return RewardSpec(tuple(terms))
