"""The one accumulator protocol: ``update`` / ``merge`` / ``finalize``.

Every streaming quantity of kdlens (soft-label summary, calibration, temperature fit,
fidelity, class similarity) is an :class:`Accumulator`: ``update`` adds a batch,
``merge`` adds another accumulator's state (so chunks can be processed apart, in any
order, and combined), ``finalize`` turns the state into a result (defined, NaN where
nothing was seen, on an empty accumulator).

``merge`` is only meaningful between accumulators of one type built with the same
settings (K, temperature, bins, delta, ...): :meth:`Accumulator.merge` refuses anything
else with an :class:`~kdlens.errors.InputError` naming the setting and both values, then
calls the subclass's ``_merge``, which trusts its argument.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Self

from kdlens.errors import InputError

__all__ = ["Accumulator", "check_mergeable"]


class Accumulator(ABC):
    """Base of every accumulator. Subclasses implement ``settings``, ``_merge`` and
    ``finalize`` (and an ``update`` whose arguments suit their data)."""

    @property
    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """The parameters that must agree for two accumulators to merge."""

    def merge(self, other: Self) -> Self:
        """Add ``other``'s state into this one and return ``self``; ``other`` is unchanged
        unless the subclass says otherwise."""
        check_mergeable(self, other)
        self._merge(other)
        return self

    @abstractmethod
    def _merge(self, other: Self) -> None:
        """Add the state of ``other`` (same type and settings, checked)."""

    @abstractmethod
    def finalize(self) -> Any:
        """The result of everything added so far."""


def check_mergeable(a: Accumulator, b: Any) -> None:
    """Refuse to merge ``b`` into ``a`` unless it has ``a``'s type and settings."""
    if type(b) is not type(a):
        raise InputError(f"cannot merge a {type(b).__name__} into a {type(a).__name__}")
    mine, theirs = a.settings, b.settings
    for key, value in mine.items():
        if theirs.get(key) != value:
            raise InputError(
                f"cannot merge {type(a).__name__}s with different {key}: "
                f"{value!r} and {theirs.get(key)!r}"
            )
