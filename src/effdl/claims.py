"""Claims, targets and measurements: what a chapter asserts, and the rows ``make bench`` prints.

A chapter states its headline results with :func:`claim`: a name, the measured value, a
comparison and two bounds, one for full mode and a (possibly weaker) one for fast mode. The claim
prints a one-line check and raises :class:`ClaimFailed` when it does not hold, so the notebook,
and CI with it, fails when a technique stops doing what the prose says.

:func:`target` records a goal the chapter aims at (a published result, or what the book expects
of a technique on an ordinary 2-core CPU) and is judged in full mode only. It never
raises: a missed target stays listed as a miss, with the section that explains it.
:func:`measure` records a plain number. ``python -m effdl.report`` runs each chapter's
``bench()`` and prints every record of all three kinds. :func:`self_check` is the verdict an
exercise gives on a student's answer.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Iterator
from dataclasses import dataclass

from effdl.config import FAST, mode

OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq}


class ClaimFailed(AssertionError):
    """A chapter's claim did not hold on this run."""


@dataclass(frozen=True)
class Record:
    """One row of a chapter's results: a claim, a target or a plain measurement."""

    kind: str  # "claim", "target" or "measure"
    name: str
    value: float
    unit: str = ""
    op: str = ""
    bound: float | None = None
    met: bool | None = None
    section: str = ""

    def line(self) -> str:
        """The one-line form printed in a notebook and in ``make bench``."""
        value = f"{self.value:,.4g} {self.unit}".rstrip()
        if self.bound is None:
            return f"{self.kind:<7} {self.name}: {value}"
        if self.met is None:
            goal = f"full-mode goal {self.op} {self.bound:g}"
            return f"{self.kind:<7} {self.name}: {value} ({goal}, not judged in {mode()} mode)"
        verdict = "holds" if self.met else ("MISSED" if self.kind == "target" else "FAILS")
        where = f" (see {self.section})" if self.section and not self.met else ""
        return f"{self.kind:<7} {self.name}: {value} {self.op} {self.bound:g} [{mode()}] {verdict}{where}"


_records: list[Record] = []
_collecting = False


def records() -> list[Record]:
    """Every record made in this process since the last :func:`clear`."""
    return list(_records)


def clear() -> None:
    """Forget the records made so far (the report runner calls it before each chapter)."""
    _records.clear()


@contextlib.contextmanager
def collecting() -> Iterator[list[Record]]:
    """Record failing claims instead of raising (``make bench`` lists every miss, then fails)."""
    global _collecting
    previous, _collecting = _collecting, True
    try:
        yield _records
    finally:
        _collecting = previous


def _check_op(op: str) -> None:
    if op not in OPS:
        raise ValueError(f"op must be one of {sorted(OPS)}, got {op!r}")


def _finite(name: str, value: float) -> float:
    value = float(value)
    if value != value:  # NaN compares false with everything: a claim on it would silently fail or pass
        raise ValueError(f"value of {name!r} is NaN")
    return value


def _record(record: Record) -> Record:
    _records.append(record)
    print(record.line())
    return record


def claim(name: str, value: float, op: str, *, full: float, fast: float, unit: str = "") -> float:
    """Assert ``value op bound`` with the bound of this run's mode; return ``value``.

    ``fast`` may be weaker than ``full`` where fast mode's small models cannot show the whole
    effect, but it must still be a bound that a broken technique misses.

    >>> claim("int8 drop", 0.1, "<=", full=0.3, fast=1.0, unit="pt")  # doctest: +SKIP
    """
    _check_op(op)
    bound = fast if FAST else full
    value = _finite(name, value)
    record = _record(Record("claim", name, value, unit, op, bound, OPS[op](value, bound)))
    if not record.met and not _collecting:
        raise ClaimFailed(f"claim {name!r} does not hold in {mode()} mode: {value:.6g} {unit} is not {op} {bound:g}")
    return value


def target(name: str, value: float, op: str, bound: float, *, unit: str = "", section: str = "") -> float:
    """Record a goal set from outside the chapter, met or not (never raises); return ``value``.

    Targets are full-mode goals: in fast mode the row is recorded without a verdict. ``section``
    is the label of the section that explains a miss.
    """
    _check_op(op)
    value = _finite(name, value)
    met = None if FAST else OPS[op](value, bound)
    _record(Record("target", name, value, unit, op, bound, met, section))
    return value


def measure(name: str, value: float, unit: str = "") -> float:
    """Record a plain measurement (a ``make bench`` row with no bound); return ``value``."""
    _record(Record("measure", name, _finite(name, value), unit))
    return value


def self_check(problems: list[str], success: str) -> bool:
    """What an exercise's self-check tells the student: ``right`` and ``success`` when ``problems`` is
    empty, otherwise ``not yet`` and each problem. Returns whether the answer is right (tests call every
    self-check with a right and a wrong answer). It records nothing: exercises are not claims."""
    if problems:
        print("not yet: " + "; ".join(problems))
    else:
        print(f"right: {success}")
    return not problems
