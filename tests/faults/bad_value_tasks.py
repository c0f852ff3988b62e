"""Task functions returning or raising what is hard to describe (for test_bad_values.py),
importable by workers that are not forked from pytest."""

from __future__ import annotations

from typing import Any


def cyclic_list() -> list[Any]:
    """A list that holds itself."""
    value: list[Any] = []
    value.append(value)
    return value


def cyclic_dict() -> dict[str, Any]:
    """A dict that holds itself, beside a number."""
    value: dict[str, Any] = {"energy": -1.5}
    value["self"] = value
    return value


def echo(x: Any) -> int:
    """Take anything as input (a cyclic one, say); return a plain number."""
    return 1


class Unprintable:
    """An object whose repr raises."""

    def __repr__(self) -> str:
        raise RuntimeError("repr is broken")


def unprintable() -> Unprintable:
    return Unprintable()


def large_bytes(size: int) -> bytes:
    """`size` zero bytes (valid UTF-8: written as text they would take six characters each)."""
    return bytes(size)


class BadReprError(Exception):
    """An exception whose repr raises."""

    def __repr__(self) -> str:
        raise RuntimeError("repr is broken")


class BadStrError(Exception):
    """An exception whose str raises."""

    def __str__(self) -> str:
        raise RuntimeError("str is broken")


class UnprintableError(Exception):
    """An exception whose repr and str raise, and whose traceback cannot be formatted (its
    notes cannot be read)."""

    def __repr__(self) -> str:
        raise RuntimeError("repr is broken")

    def __str__(self) -> str:
        raise RuntimeError("str is broken")

    @property
    def __notes__(self) -> list[str]:
        raise RuntimeError("notes are broken")


def raise_bad_repr() -> None:
    raise BadReprError("bad repr")


def raise_bad_str() -> None:
    raise BadStrError("bad str")


def raise_unprintable() -> None:
    raise UnprintableError("unprintable")


def double(x: int) -> int:
    return 2 * x
