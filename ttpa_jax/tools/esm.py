"""Error-oriented Scoring Mechanism (ESM): score a model's tool calls against gold calls.

Each prediction is parsed into calls and compared with the gold calls under a rule-based error
taxonomy. Six error types are counted:

``format``              no parsable call (or a broken call block next to parsed ones)
``tool_hallucination``  a call names a tool that is not among the given tools
``wrong_tool``          a real tool but not the gold one; also each missing or extra call
``param_name``          a key that is hallucinated (not in the schema), missing (the gold needs
                        it), or redundant (in the schema, but the gold call does not use it)
``param_type``          a value that does not fit the parameter's JSON Schema (type, enum,
                        items, nested required keys; see ``schema_check``)
``param_value``         the right key and a well-typed value, but not an acceptable one

``score = 1 - sum(weight[t] * count[t])``, clipped to [0, 1]. Parallel calls are matched to gold
calls order-free, name first: the matching with the most same-name pairs, and among those the one
of least total weighted error (``assignment.match_name_first``). Two right tools with wrong
arguments are never counted as two wrong tools because the crosswise matching would cost less.

The gold call decides what is needed: a value equal to an acceptable gold value is correct even
where the schema disagrees (BFCL passes variable names as strings), and an argument the gold marks
as omissible (``""`` among its acceptable values) may be left out even when the schema requires it.
Gold values follow the convention in ``gold_values``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ttpa_jax.core.errors import ConfigError
from ttpa_jax.tools.assignment import match_name_first
from ttpa_jax.tools.calls import Format, normalize_call, parse, parse_value
from ttpa_jax.tools.gold_values import concrete_value, matches_gold, may_omit, property_schema
from ttpa_jax.tools.schema import schema_violation

ERROR_TYPES = ("format", "tool_hallucination", "wrong_tool", "param_name", "param_type", "param_value")


@dataclass(frozen=True)
class ErrorWeights:
    """What one error of each type costs. Defaults order a single-call score as
    exact 1.0 > wrong value 0.8 > wrong type 0.7 > missing key 0.6 > wrong tool 0.3 >
    hallucinated tool 0.1 > unparseable 0.0.

    format: 1.0 -- nothing can be executed; the output carries no usable call.
    tool_hallucination: 0.9 -- well-formed, but calls a tool that does not exist: the call fails
        outright. Slightly above unparseable so that the structure the model got right still counts.
    wrong_tool: 0.7 -- executes a real but unintended action (or too few/too many calls); the
        arguments are not even comparable.
    param_name: 0.4 -- the right tool, but the call lacks a needed key or invents/adds one: it
        fails schema validation or silently changes what the tool does.
    param_type: 0.3 -- the right key with a value of the wrong kind ("5" for 5, a value outside the
        enum): rejected at the tool boundary, usually close to the intended value.
    param_value: 0.2 -- a valid call that asks for the wrong thing; the smallest structural slip.
    """

    format: float = 1.0
    tool_hallucination: float = 0.9
    wrong_tool: float = 0.7
    param_name: float = 0.4
    param_type: float = 0.3
    param_value: float = 0.2

    def __post_init__(self):
        for t in ERROR_TYPES:
            if not getattr(self, t) >= 0:
                raise ConfigError(f"esm.{t}: a weight is what one error costs, 0 or more; got {getattr(self, t)}")

    def cost(self, errors: Mapping[str, int]) -> float:
        """The weighted sum of error counts."""
        return sum(getattr(self, t) * errors.get(t, 0) for t in ERROR_TYPES)


@dataclass(frozen=True)
class ScoreResult:
    """The outcome of scoring one prediction.

    score:            1 - weighted error count, in [0, 1].
    errors:           count per error type (all six keys present).
    calls:            the predicted calls as parsed.
    parse_status:     ``ParseResult.status`` of the prediction (``ok``, ``no_call``, ...).
    matches:          ``(predicted index, gold index)`` pairs; ``None`` on one side marks an
                      extra or a missing call.
    param_name_kinds: the ``param_name`` errors split into ``missing``, ``hallucinated``, ``redundant``.
    messages:         one readable reason per error.
    """

    score: float
    errors: dict[str, int]
    calls: list[dict[str, Any]] = field(default_factory=list)
    parse_status: str = "ok"
    matches: list[tuple[int | None, int | None]] = field(default_factory=list)
    param_name_kinds: dict[str, int] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        """No error of any type."""
        return not any(self.errors.values())

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "matches": [list(m) for m in self.matches]}


@dataclass
class _CallErrors:
    errors: Counter = field(default_factory=Counter)
    kinds: Counter = field(default_factory=Counter)
    messages: list[str] = field(default_factory=list)

    def add(self, error_type: str, message: str, kind: str | None = None) -> None:
        self.errors[error_type] += 1
        if kind:
            self.kinds[kind] += 1
        self.messages.append(message)


def tools_by_name(tools: Sequence[Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """Function dicts by name; accepts OpenAI tool schemas and bare function dicts (first wins)."""
    out: dict[str, dict[str, Any]] = {}
    for tool in tools or []:
        fn = tool.get("function", tool) if isinstance(tool, Mapping) else None
        if isinstance(fn, Mapping) and isinstance(fn.get("name"), str):
            out.setdefault(fn["name"], dict(fn))
    return out


def _parameters(fn: Mapping[str, Any] | None) -> dict[str, Any]:
    params = (fn or {}).get("parameters")
    return params if isinstance(params, dict) else {}


def compare_call(pred: dict[str, Any], gold: dict[str, Any], tools: Mapping[str, dict[str, Any]]) -> _CallErrors:
    """The errors of one predicted call against one gold call (both ``{"name", "arguments"}``)."""
    out = _CallErrors()
    name = pred["name"]
    if name not in tools and name != gold["name"]:
        out.add("tool_hallucination", f"tool {name!r} is not among the given tools")
        return out
    if name != gold["name"]:
        out.add("wrong_tool", f"called {name!r} where {gold['name']!r} was expected")
        return out
    schema = _parameters(tools.get(name))
    declared = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    args, gold_args = pred["arguments"], gold["arguments"]
    for key, g in gold_args.items():
        if key not in args and not may_omit(g, property_schema(schema, key)):
            out.add("param_name", f"{name}: missing argument {key!r}", "missing")
    for key, value in args.items():
        if key not in gold_args:
            if key in declared:
                out.add("param_name", f"{name}: argument {key!r} is not needed here", "redundant")
            else:
                out.add("param_name", f"{name}: argument {key!r} is not a parameter of the tool", "hallucinated")
            continue
        sub = property_schema(schema, key)
        if matches_gold(value, gold_args[key], sub):
            continue
        reason = schema_violation(value, sub, key) if sub is not None else None
        if reason:
            out.add("param_type", f"{name}: {reason}")
        else:
            out.add("param_value", f"{name}: {key}={value!r} is not an acceptable value")
    return out


def _unmatched(pred: dict[str, Any] | None, tools: Mapping[str, Any], gold_names: set[str]) -> _CallErrors:
    """Errors of a call left without a partner: an extra predicted call or a missing gold call."""
    out = _CallErrors()
    if pred is None:
        out.add("wrong_tool", "a gold call has no matching predicted call")
    elif pred["name"] not in tools and pred["name"] not in gold_names:
        out.add("tool_hallucination", f"extra call to {pred['name']!r}, which is not among the given tools")
    else:
        out.add("wrong_tool", f"extra call to {pred['name']!r}")
    return out


def score(
    prediction: str | Sequence[Any] | Any,
    gold_calls: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None,
    weights: ErrorWeights | Mapping[str, float] | None = None,
    format: Format = "auto",
) -> ScoreResult:
    """Score ``prediction`` (raw model text, or already-parsed calls) against ``gold_calls``.

    ``gold_calls``: ``{"name", "arguments"}`` dicts; argument values follow ``gold_values``'s
    convention. An empty ``gold_calls`` means no call is expected. ``tools``: OpenAI tool schemas
    or bare function dicts. Never raises on the prediction; the score is always in [0, 1].
    """
    if not isinstance(weights, ErrorWeights):
        weights = ErrorWeights(**(weights or {}))
    parsed = parse(prediction, format) if isinstance(prediction, str) else parse_value(prediction)
    gold = [normalize_call(g) for g in gold_calls]
    table = tools_by_name(tools)
    errors: Counter = Counter()
    kinds: Counter = Counter()
    messages = list(parsed.errors)
    pred = parsed.calls
    if parsed.errors or (gold and not pred):
        n_format = len(parsed.errors) if pred else 1
        errors["format"] += n_format
        if not parsed.errors:
            messages.append("no tool call in the output")
    matches: list[tuple[int | None, int | None]] = []
    if pred:
        gold_names = {g["name"] for g in gold}
        cells: dict[tuple[int | None, int | None], _CallErrors] = {}

        def cell(i: int | None, j: int | None) -> _CallErrors:
            if (i, j) not in cells:
                if i is not None and j is not None:
                    cells[i, j] = compare_call(pred[i], gold[j], table)
                else:
                    cells[i, j] = _unmatched(pred[i] if i is not None else None, table, gold_names)
            return cells[i, j]

        matches = match_name_first([p["name"] for p in pred], [g["name"] for g in gold],
                                   lambda i, j: weights.cost(cell(i, j).errors))
        for i, j in matches:
            c = cell(i, j)
            errors.update(c.errors)
            kinds.update(c.kinds)
            prefix = f"call {i}: " if i is not None else f"gold call {j}: "
            messages.extend(prefix + m for m in c.messages)
    counts = {t: int(errors.get(t, 0)) for t in ERROR_TYPES}
    value = min(1.0, max(0.0, 1.0 - weights.cost(counts)))
    return ScoreResult(
        score=value,
        errors=counts,
        calls=pred,
        parse_status=parsed.status,
        matches=matches,
        param_name_kinds={k: int(kinds.get(k, 0)) for k in ("missing", "hallucinated", "redundant")},
        messages=messages,
    )


def resolve_gold(gold_calls: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """Concrete calls from gold calls: each argument at its first acceptable value, ``""``-first
    arguments left out. This is the call text a model should produce (e.g. the DPO chosen side)."""
    table = tools_by_name(tools)
    out = []
    for g in gold_calls:
        call = normalize_call(g)
        out.append({"name": call["name"], "arguments": concrete_value(call["arguments"], _parameters(table.get(call["name"])))})
    return out

