"""Math and unit tools. These compute exact answers: no randomness in their results."""

from __future__ import annotations

import ast
import math
import operator
import statistics

from ttpa_jax.construct.toolbox.mistakes import altered, as_fraction
from ttpa_jax.construct.toolbox.registry import ToolError, registrar

tool = registrar("math_units")

# Size of each unit in the base unit of its quantity (metre, gram, millilitre).
UNITS = {
    "length": {"mm": 0.001, "cm": 0.01, "m": 1.0, "km": 1000.0, "in": 0.0254, "ft": 0.3048,
               "mi": 1609.344},
    "mass": {"g": 1.0, "kg": 1000.0, "oz": 28.349523125, "lb": 453.59237},
    "volume": {"ml": 1.0, "l": 1000.0, "gal": 3785.411784, "cup": 240.0},
}
QUANTITY_OF = {unit: quantity for quantity, table in UNITS.items() for unit in table}
OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
             ast.Div: operator.truediv, ast.Pow: operator.pow, ast.Mod: operator.mod}


def _tidy(x: float) -> float | int:
    """Round to 4 decimals; whole numbers become integers."""
    x = round(x, 4)
    return int(x) if x == int(x) and abs(x) < 1e15 else x


# Operators as people sometimes type them, which arithmetic does not accept.
OPERATOR_SLIPS = (("**", "^"), ("*", "x"), ("/", ":"))


def _unit_of_another_quantity(args, rng) -> str:
    return rng.choice(sorted(u for u, q in QUANTITY_OF.items() if q != QUANTITY_OF[args["from_unit"]]))


def _operator_slip(args, rng) -> str | None:
    text = args["expression"]
    return next((text.replace(right, wrong, 1) for right, wrong in OPERATOR_SLIPS if right in text), None)


def _compatible_units(rng) -> dict:
    table = UNITS[rng.choice(sorted(UNITS))]
    first, second = rng.sample(sorted(table), 2)
    return {"from_unit": first, "to_unit": second}


@tool("convert_units", ask="convert", params={"value": "{}", "from_unit": "{}", "to_unit": "to {}"},
      label="{value} {from_unit}", joint=_compatible_units,
      values={"value": lambda rng: rng.choice([rng.randint(1, 500), round(rng.uniform(0.5, 100), 1)])},
      mistakes=(altered("to_unit", _unit_of_another_quantity),))
def convert_units(args, rng):
    src, dst = args["from_unit"], args["to_unit"]
    if QUANTITY_OF[src] != QUANTITY_OF[dst]:
        raise ToolError(f"cannot convert {QUANTITY_OF[src]} ({src}) to {QUANTITY_OF[dst]} ({dst})")
    table = UNITS[QUANTITY_OF[src]]
    return {"result": _tidy(args["value"] * table[src] / table[dst]), "unit": dst}


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _evaluate(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 64:
            raise ToolError("exponent too large")
        try:
            value = OPERATORS[type(node.op)](left, right)
        except ZeroDivisionError:
            raise ToolError("division by zero") from None
        except OverflowError:
            raise ToolError("the result is too large") from None
        if isinstance(value, complex):
            raise ToolError("the result is not a real number")
        if abs(value) > 1e15:
            raise ToolError("the result is too large")
        return value
    raise ToolError("only numbers, + - * / ** % and parentheses are allowed")


def _expression(rng) -> str:
    a, b, c = rng.randint(2, 60), rng.randint(2, 30), rng.randint(2, 12)
    return rng.choice([f"({a} + {b}) * {c}", f"{a} * {b} - {c}", f"{a} / {c} + {b}",
                       f"({a} - {b}) * ({c} + 1)", f"{c} ** 2 + {a}"])


@tool("evaluate_expression", ask="work out", params={"expression": "{}"}, label="{expression}",
      values={"expression": _expression}, mistakes=(altered("expression", _operator_slip),))
def evaluate_expression(args, rng):
    try:
        tree = ast.parse(args["expression"], mode="eval")
    except SyntaxError:
        raise ToolError("the expression is not valid arithmetic") from None
    value = _evaluate(tree)
    if not math.isfinite(value):
        raise ToolError("the result is not a finite number")
    return {"expression": args["expression"], "result": _tidy(value)}


@tool("calculate_percentage", ask="work out what percent",
      params={"part": "{}", "whole": "is of {}"}, label="{part} out of {whole}",
      values={"part": lambda rng: rng.randint(1, 400), "whole": lambda rng: rng.randint(400, 2000)})
def calculate_percentage(args, rng):
    return {"percentage": _tidy(100 * args["part"] / args["whole"])}


MEASURES = {"mean": statistics.fmean, "median": statistics.median, "min": min, "max": max,
            "stdev": statistics.stdev, "sum": math.fsum}


@tool("compute_statistics", ask="summarize the numbers",
      params={"numbers": lambda xs: ", ".join(str(x) for x in xs), "measures": "giving the {}"},
      label="the numbers",
      values={"numbers": lambda rng: [rng.randint(1, 99) for _ in range(rng.randint(3, 7))]})
def compute_statistics(args, rng):
    names = args.get("measures") or list(MEASURES)
    return {"count": len(args["numbers"]),
            **{name: _tidy(MEASURES[name](args["numbers"])) for name in names}}


def _to_kelvin(value: float, scale: str) -> float:
    return {"celsius": value + 273.15, "fahrenheit": (value - 32) * 5 / 9 + 273.15, "kelvin": value}[scale]


def _from_kelvin(kelvin: float, scale: str) -> float:
    return {"celsius": kelvin - 273.15, "fahrenheit": (kelvin - 273.15) * 9 / 5 + 32, "kelvin": kelvin}[scale]


def _kelvin_for_a_negative_value(args, rng) -> str | None:
    return "kelvin" if args["value"] < 0 and args["from_scale"] != "kelvin" else None


def _negative_kelvin(args, rng) -> float | None:
    return -args["value"] if args["from_scale"] == "kelvin" and args["value"] > 0 else None


def _two_scales(rng) -> dict:
    src, dst = rng.sample(["celsius", "fahrenheit", "kelvin"], 2)
    return {"value": rng.randint(200, 400) if src == "kelvin" else rng.randint(-20, 120),
            "from_scale": src, "to_scale": dst}


@tool("convert_temperature", ask="convert",
      params={"value": "{} degrees", "from_scale": "{}", "to_scale": "to {}"},
      label="{value} degrees {from_scale}",
      joint=_two_scales,
      mistakes=(altered("from_scale", _kelvin_for_a_negative_value), altered("value", _negative_kelvin)))
def convert_temperature(args, rng):
    kelvin = _to_kelvin(args["value"], args["from_scale"])
    if kelvin < 0:
        raise ToolError("temperature below absolute zero")
    return {"result": _tidy(_from_kelvin(kelvin, args["to_scale"])), "scale": args["to_scale"]}


@tool("solve_quadratic", ask="solve",
      params={"a": "{} times x squared", "b": "plus {} times x", "c": "plus {} equals zero"},
      label="the equation", values={"a": lambda rng: rng.choice([1, 2, 3, -1, -2]),
                                    "b": lambda rng: rng.randint(-12, 12),
                                    "c": lambda rng: rng.randint(-20, 20)},
      mistakes=(altered("a", lambda a, rng: 0 if a["a"] != 0 else None),))
def solve_quadratic(args, rng):
    a, b, c = args["a"], args["b"], args["c"]
    if a == 0:
        raise ToolError("a must not be zero")
    disc = b * b - 4 * a * c
    if disc < 0:
        real, imag = _tidy(-b / (2 * a)), _tidy(math.sqrt(-disc) / (2 * abs(a)))
        return {"discriminant": _tidy(disc), "real_roots": False,
                "roots": [f"{real} + {imag}i", f"{real} - {imag}i"]}
    root = math.sqrt(disc)
    roots = sorted({_tidy((-b - root) / (2 * a)), _tidy((-b + root) / (2 * a))})
    return {"discriminant": _tidy(disc), "real_roots": True, "roots": roots}


@tool("calculate_tip", ask="work out the tip",
      params={"bill_amount": "on a bill of {}", "tip_percent": "at {} percent", "people": "split between {} people"},
      label="the bill of {bill_amount}",
      values={"bill_amount": lambda rng: round(rng.uniform(12, 300), 2),
              "tip_percent": lambda rng: rng.choice([10, 12.5, 15, 18, 20])},
      mistakes=(as_fraction("tip_percent", "tip percent"),))
def calculate_tip(args, rng):
    tip = args["bill_amount"] * args["tip_percent"] / 100
    total = args["bill_amount"] + tip
    return {"tip": round(tip, 2), "total": round(total, 2),
            "per_person": round(total / args.get("people", 1), 2)}
