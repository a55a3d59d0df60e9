"""One registry pattern for every name -> thing table a user can extend.

Activations, statistics, output formats, data sources and a comparison's figures are all a
``Registry``: ordered (the order is the order users see), a read-only mapping (iteration yields
names, ``in``, ``[name]``, ``items()``), and changed only through ``register``, which refuses a
silent override (BackPACK's ``overwrite=False``), so two plug-ins cannot replace each other
unnoticed. A lookup miss lists the valid names, so a typo is fixed from the message alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar, overload

from neurodiag.errors import NeurodiagError

T = TypeVar("T")


class UnknownNameError(NeurodiagError, KeyError, ValueError):
    """A name nobody registered: a KeyError for mapping code, a ValueError for API callers, a
    one-line error for the CLI (a NeurodiagError); the message lists the valid names."""

    def __str__(self) -> str:  # KeyError's own str() would repr() the message into quotes
        return str(self.args[0]) if self.args else ""


class Registry(Mapping[str, T], Generic[T]):
    """Ordered ``name -> item`` table that refuses silent overrides and names the valid names.

    ``kind`` is what the names are called in messages ("format", "activation"); ``listing``
    introduces the valid names after a miss ("known", "choose one of"); ``error`` is the
    UnknownNameError subclass a miss raises (a module may keep its own, e.g. UnknownFormatError).
    """

    def __init__(
        self,
        kind: str,
        *,
        listing: str = "known",
        error: type[UnknownNameError] = UnknownNameError,
    ) -> None:
        self.kind = kind
        self.listing = listing
        self.error = error
        self._items: dict[str, T] = {}

    @overload
    def register(self, name: str, item: T, *, overwrite: bool = ...) -> T: ...

    @overload
    def register(self, name: str, *, overwrite: bool = ...) -> Callable[[T], T]: ...

    def register(
        self, name: str, item: T | None = None, *, overwrite: bool = False
    ) -> T | Callable[[T], T]:
        """Add ``item`` under ``name`` and return it; without ``item``, a decorator that does.

        A name already taken is refused unless ``overwrite=True`` (the message says so): a
        replacement must be asked for. An overwritten name keeps its place in the order.
        """
        self._check(name, overwrite)
        if item is None:

            def decorate(target: T) -> T:
                return self.register(name, target, overwrite=overwrite)

            return decorate
        self._items[name] = item
        return item

    def _check(self, name: str, overwrite: bool) -> None:
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            raise ValueError(f"{self.kind} names must be non-empty words, got {name!r}")
        if name in self._items and not overwrite:
            raise ValueError(
                f"{self.kind} {name!r} is already registered; pass overwrite=True to replace it"
            )

    def update(self, items: Mapping[str, T], *, overwrite: bool = False) -> None:
        """``register`` each of ``items`` in order, all or none (a test restoring a saved copy)."""
        for name in items:
            self._check(name, overwrite)
        self._items.update(items)

    def unregister(self, name: str) -> T:
        """Remove ``name`` and return its item (an unknown name raises, listing the valid ones)."""
        item = self[name]
        del self._items[name]
        return item

    def clear(self) -> None:
        """Remove every entry (tests that save, clear and restore a registry)."""
        self._items.clear()

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._items)

    def __getitem__(self, name: str) -> T:
        try:
            return self._items[name]
        except (KeyError, TypeError):  # TypeError: an unhashable key is no name either
            raise self.error(self.miss(name)) from None

    def miss(self, name: object) -> str:
        """The message for an unknown ``name``: what it is, then every valid name in order."""
        return f"unknown {self.kind} {name!r}; {self.listing}: {', '.join(self._items) or 'none'}"

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._items
        except TypeError:
            return False

    def __repr__(self) -> str:
        return f"<Registry of {len(self)} {self.kind} entries: {', '.join(self._items)}>"


class RegistryView(Mapping[str, T], Generic[T]):
    """The mapping side of a ``Registry`` kept in ``self.entries``, for registries that add to
    it: items that name themselves (``register(item)``: activations, statistics) or extra
    lookup tables (activations by module type and function)."""

    entries: Registry[T]

    def __getitem__(self, name: str) -> T:
        return self.entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return self.entries.names()


__all__ = ["Registry", "RegistryView", "UnknownNameError"]
