"""Named registries, timm/open_clip style: one place where each kind of component is listed.

A registry maps a name to an entry (a spec, a factory). Command-line choices, checkpoint
loading and the docs' lists read from it, so a new source, backbone or head method is one
``register`` call.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from contracts.errors import CityAuditError

T = TypeVar("T")

class UnknownNameError(CityAuditError, KeyError):
    """A name that no registry entry has."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])

class Registry(Generic[T]):
    """Entries of one kind by name, in registration order.

    ``kind`` names the kind in error messages ("imagery source", "backbone", ...); ``error`` is
    the ``CityAuditError`` raised for an unknown name.
    """

    def __init__(self, kind: str, error: type[CityAuditError] = UnknownNameError) -> None:
        self.kind = kind
        self.error = error
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T | None = None):
        """Register ``entry`` under ``name``; without ``entry``, return a decorator that registers its argument."""
        def add(value: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = value
            return value

        return add if entry is None else add(entry)

    def get(self, name: str) -> T:
        """The entry named ``name``; ``self.error`` listing the known names otherwise."""
        try:
            return self._entries[name]
        except KeyError:
            raise self.error(f"unknown {self.kind} {name!r}; choose from {', '.join(self._entries)}") from None

    def names(self) -> list[str]:
        return list(self._entries)

    def items(self):
        return self._entries.items()

    def values(self):
        return self._entries.values()

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, name: str) -> T:
        return self.get(name)

Factory = Callable[..., T]
