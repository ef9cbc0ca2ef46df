"""A tiny name -> factory registry, used for models and datasets."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories; unknown names raise an error listing valid ones.

    Example:

    >>> models = Registry("model")
    >>> @models.register("tiny")
    ... def tiny():
    ...     return 1
    >>> models.get("tiny")()
    1
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers a factory under ``name``."""

        def decorator(factory: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered.")
            self._entries[name] = factory
            return factory

        return decorator

    def get(self, name: str) -> T:
        """The factory for ``name``.

        Raises:
            ValueError: If ``name`` is not registered; lists the valid names.
        """
        if name not in self._entries:
            raise ValueError(
                f"unknown {self.kind} {name!r}; expected one of: {', '.join(self.names())}."
            )
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)
