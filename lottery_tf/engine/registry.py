"""A tiny name -> factory registry, used for models and datasets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

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
        self._prefixes: dict[str, tuple[Callable, str]] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers a factory under ``name``."""

        def decorator(factory: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered.")
            self._entries[name] = factory
            return factory

        return decorator

    def register_prefix(self, prefix: str, pattern: str) -> Callable:
        """Decorator for a family of names ``prefix<suffix>``.

        The decorated ``resolve(suffix)`` returns a factory, or None if the suffix
        is not valid; ``pattern`` describes valid names in error messages.
        """

        def decorator(resolve):
            self._prefixes[prefix] = (resolve, pattern)
            return resolve

        return decorator

    def get(self, name: str) -> T:
        """The factory for ``name``.

        Raises:
            ValueError: If ``name`` is not registered; lists the valid names.
        """
        if name in self._entries:
            return self._entries[name]
        for prefix, (resolve, _) in self._prefixes.items():
            if name.startswith(prefix):
                factory = resolve(name[len(prefix) :])
                if factory is not None:
                    return factory
        raise ValueError(f"unknown {self.kind} {name!r}; expected one of: {', '.join(self.names())}.")

    def __contains__(self, name: str) -> bool:
        try:
            self.get(name)
        except ValueError:
            return False
        return True

    def names(self) -> list[str]:
        """Registered names, then the patterns of name families."""
        return sorted(self._entries) + [pattern for _, pattern in self._prefixes.values()]
