"""Bounds on what a caller may send: nesting depth and number of values.

Both faces check here (the library in ``App``, HTTP after parsing a body), so
that a value that would break an encoder further down (a recursive walk, the
msgpack packer's nesting limit) or tie up the event loop is refused at the
edge with an ``InputValidationError`` naming the limit, and never reaches a
replica. The walk is iterative: a hostile value cannot exhaust the stack here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import errors

DEFAULT_MAX_DEPTH = 64
"""Containers inside containers; real inputs rarely nest ten deep."""
DEFAULT_MAX_VALUES = 250_000
"""Values (container entries and scalars) in one input or setup."""


@dataclass(frozen=True)
class InputLimits:
    """Bounds on an input's nesting and size, checked before it is sent to a child."""

    max_depth: int = DEFAULT_MAX_DEPTH
    max_values: int = DEFAULT_MAX_VALUES

    def check(self, value: Any, what: str) -> None:
        """Raise ``InputValidationError`` when ``value`` exceeds a limit."""
        stack: list[tuple[Any, int]] = [(value, 0)]
        count = 0
        while stack:
            item, depth = stack.pop()
            count += 1
            if count > self.max_values:
                raise _refuse(what, f"more than {self.max_values} values", "max_values")
            kind = type(item)
            if kind is dict:
                children: Any = item.values()
            elif kind is list or kind is tuple:
                children = item
            else:
                continue
            if depth >= self.max_depth:
                raise _refuse(what, f"nested deeper than {self.max_depth} levels", "max_depth")
            stack.extend((child, depth + 1) for child in children)


def _refuse(what: str, why: str, limit: str) -> errors.InputValidationError:
    return errors.InputValidationError(
        f"the {what} is refused: {why}",
        errors=[{"loc": [what], "msg": why, "type": f"limit.{limit}"}],
    )
