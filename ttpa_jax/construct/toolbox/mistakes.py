"""Plausible wrong argument values, and the rules by which the simulated tools refuse them.

An error-recovery episode (docs/construction.md) first makes one call with a wrong value that still
fits the tool's JSON Schema; the tool refuses it and the next call, with the right value, succeeds.
Each ``Mistake`` pairs how such a value is made with the rule that refuses it:

- ``misspell``: a name one key off (``Lisvon`` for ``Lisbon``). A name one edit away from a known
  one (a city, country, ticker, dish, channel, mail domain, ...) without being one is unknown.
- ``unissued``: identifiers are issued with digits that never start with 0, so ``FL-0821`` does not
  exist where ``FL-4821`` may.
- ``stale_date``: last year written for a booking date. Bookings before the simulated today
  (``vocab.TODAY``) are in the past.
- ``as_fraction``: a percentage written as a fraction (``0.039`` for 3.9 percent).
- ``same_as`` and ``altered``: values the executor itself already refuses (the same currency twice,
  units of another quantity, ...).

The rules refuse only values the template generator never draws, so a call it plans succeeds; and
like every result, a refusal depends on the arguments alone.
"""

from __future__ import annotations

import copy
import datetime as dt
import random
import re
from collections.abc import Callable, Sequence
from typing import Any

from ttpa_jax.construct.toolbox import vocab
from ttpa_jax.construct.toolbox.registry import Mistake, ToolError

KEYBOARD_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
FRACTION_BELOW = 0.25
STALE_YEAR = vocab.TODAY.year - 1  # a leap year: every month and day of a later date exists in it
FIRST_DIGIT = re.compile(r"\d")

Args = dict[str, Any]
# Which piece of a text value a misspelling touches: (read it, put a new piece back).
Part = tuple[Callable[[str], str], Callable[[str, str], str]]
WHOLE: Part = (lambda text: text, lambda text, piece: piece)
ADDRESS_CITY: Part = (lambda text: text.rpartition(", ")[2],
                      lambda text, piece: text.rpartition(", ")[0] + ", " + piece if ", " in text else piece)
MAIL_DOMAIN: Part = (lambda text: text.rpartition("@")[2], lambda text, piece: text.rpartition("@")[0] + "@" + piece)
FIRST_WORD: Part = (lambda text: text.partition(" ")[0],
                    lambda text, piece: piece + text.partition(" ")[1] + text.partition(" ")[2])


# ---------------------------------------------------------------- argument values

def get_at(args: Args, param: str) -> Any:
    """The value at a dotted parameter path (``send_at.date``), or ``None``."""
    value: Any = args
    for key in param.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def with_value(args: Args, param: str, value: Any) -> Args:
    """A copy of ``args`` with ``value`` at the dotted path ``param``."""
    out = copy.deepcopy(args)
    *outer, last = param.split(".")
    target = out
    for key in outer:
        target = target[key]
    target[last] = value
    return out


def texts_at(args: Args, param: str) -> list[str]:
    """The strings at ``param``: the value itself, or every string of a list value."""
    value = get_at(args, param)
    values = value if isinstance(value, list) else [value]
    return [v for v in values if isinstance(v, str)]


def change_text(args: Args, param: str, change: Callable[[str], str | None]) -> Args | None:
    """``args`` with ``change`` applied to the string at ``param`` (a list value: its first element)."""
    value = get_at(args, param)
    if isinstance(value, list):
        first = change(value[0]) if value and isinstance(value[0], str) else None
        return None if first is None else with_value(args, param, [first, *value[1:]])
    new = change(value) if isinstance(value, str) else None
    return None if new is None else with_value(args, param, new)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ---------------------------------------------------------------- misspelled names

def neighbour_keys(char: str) -> str:
    """The letters next to ``char`` on its keyboard row ("" for a character that is not a letter)."""
    lower = char.lower()
    for row in KEYBOARD_ROWS:
        i = row.find(lower)
        if i >= 0 and lower.isalpha():
            return row[max(i - 1, 0):i] + row[i + 1:i + 2]
    return ""


def typo(text: str, rng: random.Random) -> str | None:
    """``text`` with one inner letter replaced by a key next to it (``Lisbon`` -> ``Lisvon``), case
    kept; ``None`` when no inner character is a letter."""
    spots = [i for i in range(1, len(text) - 1) if neighbour_keys(text[i])]
    if not spots:
        return None
    i = rng.choice(spots)
    key = rng.choice(neighbour_keys(text[i]))
    return text[:i] + (key.upper() if text[i].isupper() else key) + text[i + 1:]


def one_edit_apart(a: str, b: str) -> bool:
    """Whether ``b`` is ``a`` with exactly one letter replaced, added or removed."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b)) == 1
    short, long = sorted((a, b), key=len)
    i = next((k for k, (x, y) in enumerate(zip(short, long)) if x != y), len(short))
    return short[i:] == long[i + 1:]


def misspelled(name: str, known: Sequence[str]) -> bool:
    """Whether ``name`` is one edit away from a known name without being one (case-insensitive)."""
    folded = name.strip().casefold()
    names = {k.casefold() for k in known}
    return folded not in names and any(one_edit_apart(folded, k) for k in names)


def misspell(param: str, known: Sequence[str], refusal: str, part: Part = WHOLE) -> Mistake:
    """A name with a typo; the tool refuses a value whose ``part`` is a misspelling of a ``known``
    name, with ``refusal`` formatted with the value."""
    read, put = part

    def make(args: Args, rng: random.Random) -> Args | None:
        def change(text: str) -> str | None:
            piece = typo(read(text), rng)
            return None if piece is None else put(text, piece)

        return change_text(args, param, change)

    def check(args: Args) -> None:
        for text in texts_at(args, param):
            if misspelled(read(text), known):
                raise ToolError(refusal.format(text))

    return Mistake(make, check)


# ---------------------------------------------------------------- identifiers, dates, percentages

def unissued(param: str, what: str) -> Mistake:
    """An identifier with its first digit turned into 0 (``FL-4821`` -> ``FL-0821``): never issued."""

    def make(args: Args, rng: random.Random) -> Args | None:
        def change(text: str) -> str | None:
            m = FIRST_DIGIT.search(text)
            return None if m is None or m.group() == "0" else text[:m.start()] + "0" + text[m.end():]

        return change_text(args, param, change)

    def check(args: Args) -> None:
        for text in texts_at(args, param):
            m = FIRST_DIGIT.search(text)
            if m is not None and m.group() == "0":
                raise ToolError(f"no {what} {text}")

    return Mistake(make, check)


def _date(value: Any) -> dt.date | None:
    try:
        return dt.date.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def stale_date(param: str, what: str) -> Mistake:
    """A date written with last year (``2024-03-14`` for ``2025-03-14``); dates before the simulated
    today are refused as past."""

    def make(args: Args, rng: random.Random) -> Args | None:
        day = _date(get_at(args, param))
        if day is None or day < vocab.TODAY:
            return None
        return with_value(args, param, day.replace(year=STALE_YEAR).isoformat())

    def check(args: Args) -> None:
        day = _date(get_at(args, param))
        if day is not None and day < vocab.TODAY:
            raise ToolError(f"{what} {day.isoformat()} is in the past")

    return Mistake(make, check)


def as_fraction(param: str, what: str) -> Mistake:
    """A percentage divided by 100 (``0.039`` for 3.9); values between 0 and 0.25 are refused."""

    def make(args: Args, rng: random.Random) -> Args | None:
        value = get_at(args, param)
        return with_value(args, param, round(value / 100, 6)) if _number(value) and value >= 1 else None

    def check(args: Args) -> None:
        value = get_at(args, param)
        if _number(value) and 0 < value < FRACTION_BELOW:
            raise ToolError(f"{what} {value} looks like a fraction; give it in percent")

    return Mistake(make, check)


# ---------------------------------------------------------------- values the executor refuses

def same_as(param: str, other: str) -> Mistake:
    """``param`` given the value of ``other``, which the executor refuses."""

    def make(args: Args, rng: random.Random) -> Args | None:
        if param not in args or other not in args or args[param] == args[other]:
            return None
        return with_value(args, param, args[other])

    return Mistake(make)


def altered(param: str, change: Callable[[Args, random.Random], Any]) -> Mistake:
    """``param`` set to ``change(args, rng)`` (``None``: the mistake does not apply), a value the
    executor refuses."""

    def make(args: Args, rng: random.Random) -> Args | None:
        value = change(args, rng)
        return None if value is None else with_value(args, param, value)

    return Mistake(make)


# ---------------------------------------------------------------- shared by several domains

def misspelled_city(param: str) -> Mistake:
    return misspell(param, vocab.CITIES, "unknown city {!r}")


def misspelled_country(param: str) -> Mistake:
    return misspell(param, vocab.COUNTRIES, "unknown country {!r}")


def misspelled_place(param: str) -> Mistake:
    """A typo in the city of an address (``12 Elm Street, Lisvon``): the place is not found."""
    return misspell(param, vocab.CITIES, "no place found for {!r}", ADDRESS_CITY)


def misspelled_mail(param: str) -> Mistake:
    """A typo in the domain of an email address: it cannot be delivered."""
    return misspell(param, vocab.MAIL_DOMAINS, "unknown mail domain in {!r}", MAIL_DOMAIN)
