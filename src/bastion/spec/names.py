"""Checks on lists of names that plans, rosters and models must keep unique."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable


def repeated(names: Iterable[str]) -> list[str]:
    """The names given more than once, sorted; one pass, so a roster of thousands is cheap
    (``list.count`` per name was quadratic)."""
    return sorted(name for name, count in Counter(names).items() if count > 1)
