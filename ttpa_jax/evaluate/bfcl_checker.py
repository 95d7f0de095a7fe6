"""BFCL's own verdicts: bfcl-eval's AST checker, output decoders and leaderboard aggregation.

Nothing here re-implements BFCL's rules. ``eval_checker/ast_eval/ast_checker.py`` (the checker),
``model_handler/utils.py`` (the prompt-mode system prompt and Python-call parser) and
``eval_checker/eval_runner_helper.py`` (the leaderboard's accuracy formulas) are loaded from the
installed package, each under a private module name, with stand-ins for what they import but
evaluation does not use: the model registry ``bfcl_eval.constants.model_config`` (which imports
every vendor SDK; the stand-in maps ``MODEL_NAME`` to a config that keeps dots in function names,
as local models' configs do), ``tenacity`` (API retries) and, when ``tree_sitter`` is not
installed, the Java/JavaScript parsers (prompt-mode decoding of those categories then raises
``BFCLNotInstalled`` with the install line). The stand-ins are in ``sys.modules`` only while a file
loads.

``judge`` follows bfcl-eval's ``eval_runner._evaluate_single_ast_entry`` and
``_evaluate_single_relevance_entry`` step by step (decode, format check, ``ast_checker``), with
one difference: where the checker itself raises on an odd output (BFCL's run would stop), the entry
is wrong with error type ``checker_error``. Two
decoders give it BFCL's ``[{name: {arg: value}}]``:

* ``decode_prompt``: prompt mode, BFCL's ``default_decode_ast_prompting`` (Python, Java or
  JavaScript syntax by category). Before BFCL's parser sees the text, one check of ours: BFCL
  evaluates arithmetic and lambda arguments with ``eval``; an argument of that kind that contains a
  call is refused as a decode error instead of being run.
* ``decode_fc``: function-calling mode, calls parsed from the chat template's tool-call format
  (``ttpa_jax.tools.calls``); as in BFCL's local FC handlers, blocks that do not parse are dropped and
  no call decodes to ``[]``.

JAX-free.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import sys
import types
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ttpa_jax.core.jsonl import DataError
from ttpa_jax.tools.calls import Format, parse, parse_value

MODEL_NAME = "ttpa-jax-local"
TREE_SITTER_PINS = "tree_sitter==0.21.3 tree-sitter-java==0.21.0 tree-sitter-javascript==0.21.4"

# The single-turn categories, in the leaderboard's order (bfcl_eval.constants.category_mapping).
NON_LIVE = ("simple_python", "simple_java", "simple_javascript", "multiple", "parallel", "parallel_multiple",
            "irrelevance")
LIVE = ("live_simple", "live_multiple", "live_parallel", "live_parallel_multiple", "live_irrelevance",
        "live_relevance")
CATEGORIES = NON_LIVE + LIVE


class BFCLNotInstalled(DataError):
    """The bfcl-eval package (or a parser it needs) cannot be found."""


def is_relevance_category(category: str) -> bool:
    """Irrelevance and relevance categories: judged by whether a call is made, no possible answer."""
    return "relevance" in category


def package_dir(package: str = "bfcl_eval") -> Path:
    """The installed bfcl-eval package folder (located without importing it)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    for loc in list(spec.submodule_search_locations or []) if spec else []:
        if (Path(loc) / "data").is_dir():
            return Path(loc)
    raise BFCLNotInstalled("the BFCL data files and checker come with the bfcl-eval package, which is not installed: "
                           "pip install --no-deps bfcl-eval")


@dataclass(frozen=True)
class _StandInModelConfig:
    """What the checker reads of a model's registry entry."""

    underscore_to_dot: bool = False


def _module(name: str, **attrs: Any) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    return mod


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _needs_tree_sitter(language: str):
    def parse_call(source_code: str):
        raise BFCLNotInstalled(f"decoding {language} function calls in prompt mode needs BFCL's tree-sitter parser: "
                               f"pip install {TREE_SITTER_PINS}")

    return parse_call


@contextmanager
def _stand_ins(modules: Mapping[str, types.ModuleType]) -> Iterator[None]:
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name, mod in saved.items():
            if mod is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = mod


def _load(relative: str, private_name: str) -> types.ModuleType:
    path = package_dir() / relative
    stand_ins = {"bfcl_eval.constants.model_config": _module(
        "bfcl_eval.constants.model_config",
        MODEL_CONFIG_MAPPING={MODEL_NAME.replace("_", "/"): _StandInModelConfig()})}
    if not _importable("tenacity"):
        stand_ins["tenacity"] = _module("tenacity", **{n: None for n in (
            "retry", "retry_if_exception_message", "retry_if_exception_type", "stop_after_attempt",
            "wait_random_exponential")})
    if not _importable("tree_sitter"):
        parser = "bfcl_eval.model_handler.parser"
        stand_ins[f"{parser}.java_parser"] = _module(f"{parser}.java_parser",
                                                     parse_java_function_call=_needs_tree_sitter("Java"))
        stand_ins[f"{parser}.js_parser"] = _module(f"{parser}.js_parser",
                                                   parse_javascript_function_call=_needs_tree_sitter("JavaScript"))
    spec = importlib.util.spec_from_file_location(private_name, path)
    module = importlib.util.module_from_spec(spec)
    with _stand_ins(stand_ins):
        spec.loader.exec_module(module)
    return module


@functools.cache
def checker() -> types.ModuleType:
    """bfcl-eval's ``ast_checker`` module."""
    return _load("eval_checker/ast_eval/ast_checker.py", "ttpa_jax_bfcl_ast_checker")


@functools.cache
def handler_utils() -> types.ModuleType:
    """bfcl-eval's ``model_handler/utils.py``: system prompt, ``default_decode_ast_prompting``."""
    return _load("model_handler/utils.py", "ttpa_jax_bfcl_handler_utils")


@functools.cache
def runner_helper() -> types.ModuleType:
    """bfcl-eval's ``eval_runner_helper``: ``calculate_(un)weighted_accuracy``, ``get_category_score``."""
    return _load("eval_checker/eval_runner_helper.py", "ttpa_jax_bfcl_runner_helper")


def _enums():
    from bfcl_eval.constants import enums  # deferred: optional dependency (bfcl-eval)

    return enums


def language(category: str):
    """The checker's ``Language`` and the decoder's ``ReturnFormat`` of a category (eval_runner.ast_file_runner)."""
    enums = _enums()
    if "java" in category and "javascript" not in category:
        return enums.Language.JAVA, enums.ReturnFormat.JAVA
    if "javascript" in category:
        return enums.Language.JAVASCRIPT, enums.ReturnFormat.JAVASCRIPT
    return enums.Language.PYTHON, enums.ReturnFormat.PYTHON


def system_prompt_messages(question: list[dict[str, Any]], functions: list[dict[str, Any]], entry_id: str) -> list[dict[str, Any]]:
    """Prompt mode's messages: BFCL's default system prompt with the functions, then the question."""
    return handler_utils().system_prompt_pre_processing_chat_model([dict(m) for m in question], functions, entry_id)


def _refuse_calls_in_evaluated_arguments(text: str) -> None:
    """BFCL ``eval``s arithmetic (``BinOp``) and ``Lambda`` arguments; refuse those that contain a call."""
    cleaned = text.strip("`\n ")
    cleaned = ("[" if not cleaned.startswith("[") else "") + cleaned + ("]" if not cleaned.endswith("]") else "")
    try:
        tree = ast.parse(cleaned.strip().strip("'"), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return  # BFCL's own parser reports it
    for node in ast.walk(tree):
        if isinstance(node, (ast.BinOp, ast.Lambda)) and any(isinstance(n, ast.Call) for n in ast.walk(node)):
            raise ValueError(f"refused to evaluate an argument that calls a function: {ast.unparse(node)[:200]}")


def decode_prompt(output: str, category: str) -> list[dict[str, Any]]:
    """Prompt-mode output decoded by BFCL's Python/Java/JavaScript call parser; raises when it fails."""
    _, return_format = language(category)
    if return_format == _enums().ReturnFormat.PYTHON:
        _refuse_calls_in_evaluated_arguments(output)
    return handler_utils().default_decode_ast_prompting(output, return_format)


def decode_fc(output: str | list[Any], format: Format = "auto") -> list[dict[str, Any]]:
    """Function-calling output (text in the tool-call format, or a list of calls) as ``[{name: args}]``."""
    parsed = parse(output, format) if isinstance(output, str) else parse_value(output)
    return [{c["name"]: dict(c["arguments"])} for c in parsed.calls]


@dataclass(frozen=True)
class Verdict:
    """One entry's verdict as BFCL's runner writes it: ``valid``, the ``error`` list and ``error_type``."""

    valid: bool
    error: list[Any] = field(default_factory=list)
    error_type: str = ""


def judge(category: str, functions: list[dict[str, Any]], possible_answer: list[dict[str, Any]] | None,
          decoded: list[dict[str, Any]] | None, decode_error: str | None = None) -> Verdict:
    """The leaderboard's verdict for one entry.

    functions:       the entry's BFCL function docs as in the data file (no language hints).
    possible_answer: its ``ground_truth`` (None for irrelevance/relevance categories).
    decoded:         the decoder's output, or None with ``decode_error`` when decoding raised.
    """
    helpers = checker()
    if is_relevance_category(category):
        contains_call = decode_error is None and not is_no_call(decoded)
        success = not contains_call if "irrelevance" in category else contains_call
        if success:
            return Verdict(True)
        if "irrelevance" in category:
            return Verdict(False, ["Valid syntax. Successfully decode AST when it should not."],
                           "irrelevance_error:decoder_success")
        return Verdict(False, [f"Invalid syntax. Failed to decode AST when it should have. {decode_error}"],
                       "relevance_error:decoder_failed")
    if decode_error is not None:
        return Verdict(False, [f"Invalid syntax. Failed to decode AST. {decode_error}"], "ast_decoder:decoder_failed")
    if not is_call_list(decoded):
        return Verdict(False, ["Did not output in the specified format. Note: the model_result is wrapped in a string "
                               "to ensure json serializability."], "ast_decoder:decoder_wrong_output_format")
    lang, _ = language(category)
    try:
        result = helpers.ast_checker(functions, decoded, possible_answer, lang, category, MODEL_NAME)
    except Exception as e:  # BFCL's runner would stop here; one odd output must not lose a whole run
        return Verdict(False, [f"the checker raised {type(e).__name__}: {e}"], "checker_error")
    return Verdict(bool(result["valid"]), list(result.get("error", [])), result.get("error_type", ""))


def is_call_list(decoded: Any) -> bool:
    """BFCL's format check: ``[{name: {arg: value}}, ...]`` (``[]`` included)."""
    from bfcl_eval.utils import is_function_calling_format_output  # deferred: optional dependency (bfcl-eval)

    return is_function_calling_format_output(decoded)


def is_no_call(decoded: Any) -> bool:
    """BFCL's relevance check: ``[]``, ``[{}]`` or anything not in the call format counts as no call."""
    from bfcl_eval.utils import is_empty_output  # deferred: optional dependency (bfcl-eval)

    return is_empty_output(decoded)


def decode_and_judge(category: str, functions: list[dict[str, Any]], possible_answer: list[dict[str, Any]] | None,
                     output: str | list[Any], mode: str, format: Format = "auto") -> tuple[Any, Verdict]:
    """Decode ``output`` (``mode``: ``fc`` or ``prompt``) and judge it; returns ``(decoded, verdict)``.

    A list of calls is taken as already decoded, whatever the mode.
    """
    try:
        if isinstance(output, list) or mode == "fc":
            decoded = decode_fc(output, format)
        else:
            decoded = decode_prompt(output, category)
    except BFCLNotInstalled:
        raise
    except Exception as e:  # BFCL's runner counts any decoder exception as a decode failure
        return None, judge(category, functions, possible_answer, None, str(e))
    return decoded, judge(category, functions, possible_answer, decoded)


# ---------------------------------------------------------------------------------------------
# The leaderboard's columns (eval_runner_helper.generate_leaderboard_csv, single-turn part)


def leaderboard(scores: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, Any]]:
    """Non-live and live columns from per-category ``{"accuracy", "total_count"}``.

    Each column is ``{"accuracy", "total_count", "display_accuracy"}``; ``display_accuracy`` is None
    where the leaderboard shows N/A (a category it needs was not evaluated; it then counts that
    category as 0 with the full data set's size, as BFCL does).
    """
    h = runner_helper()
    table = {cat: {"accuracy": float(s["accuracy"]), "total_count": int(s["total_count"])} for cat, s in scores.items()}
    score = {cat: h.get_category_score(table, cat) for cat in CATEGORIES}
    simple = h.calculate_unweighted_accuracy([score["simple_python"], score["simple_java"], score["simple_javascript"]])
    non_live_parts = [simple, score["multiple"], score["parallel"], score["parallel_multiple"]]
    live_parts = [score["live_simple"], score["live_multiple"], score["live_parallel"], score["live_parallel_multiple"]]
    columns = {
        "Non-Live Overall Acc": h.calculate_unweighted_accuracy(non_live_parts, display_na_if_category_missing=False),
        "Non-Live AST Summary": h.calculate_unweighted_accuracy(non_live_parts),
        "Simple AST": simple,
        "Python Simple AST": score["simple_python"],
        "Java Simple AST": score["simple_java"],
        "JavaScript Simple AST": score["simple_javascript"],
        "Multiple AST": score["multiple"],
        "Parallel AST": score["parallel"],
        "Parallel Multiple AST": score["parallel_multiple"],
        "Irrelevance Detection": score["irrelevance"],
        "Live Overall Acc": h.calculate_weighted_accuracy(live_parts, display_na_if_category_missing=False),
        "Live AST Summary": h.calculate_weighted_accuracy(live_parts),
        "Live Python Simple AST": score["live_simple"],
        "Live Python Multiple AST": score["live_multiple"],
        "Live Python Parallel AST": score["live_parallel"],
        "Live Python Parallel Multiple AST": score["live_parallel_multiple"],
        "Live Irrelevance Detection": score["live_irrelevance"],
        "Live Relevance Detection": score["live_relevance"],
        "Total Irrelevance": h.calculate_unweighted_accuracy([score["irrelevance"], score["live_irrelevance"]]),
    }
    out = {}
    for name, col in columns.items():
        shown = col.get("display_accuracy")
        out[name] = {"accuracy": float(col["accuracy"]), "total_count": int(col["total_count"]),
                     "display_accuracy": None if shown == "N/A" else float(shown)}
    return out


def category_scores(verdicts: Sequence[tuple[str, bool]]) -> dict[str, dict[str, float]]:
    """Per-category ``{"accuracy", "correct_count", "total_count"}`` from ``(category, valid)`` pairs."""
    out: dict[str, dict[str, float]] = {}
    for category, valid in verdicts:
        row = out.setdefault(category, {"accuracy": 0.0, "correct_count": 0, "total_count": 0})
        row["correct_count"] += int(bool(valid))
        row["total_count"] += 1
    for row in out.values():
        row["accuracy"] = row["correct_count"] / row["total_count"]
    return {cat: out[cat] for cat in sorted(out, key=lambda c: CATEGORIES.index(c) if c in CATEGORIES else len(CATEGORIES))}
