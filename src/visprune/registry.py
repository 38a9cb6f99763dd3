"""Name -> class registries for selection methods and model adapters."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError, ValueError):
    """An unknown registry name; the message lists the available names and the closest match."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """A small name -> class mapping with decorator registration and did-you-mean errors.

    Parameters
    ----------
    kind : str
        What the registry holds ("method", "model type"), used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register the decorated class under ``name`` (lowercase, unique)."""
        if name != name.lower():
            raise ValueError(f"{self.kind} names are lowercase, got {name!r}.")

        def decorate(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered.")
            self._entries[name] = entry
            return entry

        return decorate

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: object) -> str:
        """An error text that lists the registered names and suggests the closest one."""
        available = ", ".join(self._entries)
        message = f"unknown {self.kind} {name!r}; available: {available}."
        if isinstance(name, str):
            close = difflib.get_close_matches(name.lower(), self._entries, n=1, cutoff=0.5)
            if close:
                message += f" Did you mean {close[0]!r}?"
        return message


METHODS: Registry = Registry("method")
ADAPTERS: Registry = Registry("model type")
