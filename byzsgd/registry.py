"""Name -> implementation lookups, so YAML can select aggregators, attacks and protocols."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A user-facing error in a configuration: names the field and the rule it breaks."""


def _origin(item: object) -> tuple[str | None, str | None]:
    return getattr(item, "__module__", None), getattr(item, "__qualname__", None)


class Registry(Generic[T]):
    """A named table of implementations with one error listing the known names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, replace: bool = False) -> Callable[[T], T]:
        """Add an item under ``name``. With ``replace``, the same definition registered again (a
        notebook cell run twice, a plugin module reloaded) replaces the old one; a different
        definition under a taken name is still an error."""

        def add(item: T) -> T:
            if name in self._items and not (replace and _origin(self._items[name]) == _origin(item)):
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = item
            return item

        return add

    def __getitem__(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items))
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def names(self) -> list[str]:
        return sorted(self._items)

    def build(self, name: str, field: str = "", **params: Any) -> Any:
        """Instantiate `name` with `params`, turning a bad parameter into a ConfigError."""
        factory = self[name]
        where = f"{field}: " if field else ""
        try:
            signature = inspect.signature(factory)
        except (TypeError, ValueError):
            signature = None
        if signature is not None:
            accepts_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
            allowed = [p for p in signature.parameters if p not in ("self",)]
            unknown = [k for k in params if k not in signature.parameters]
            if unknown and not accepts_any:
                raise ConfigError(
                    f"{where}unknown parameter {unknown[0]!r} for {self.kind} {name!r}"
                    f" (accepts: {', '.join(allowed) or 'nothing'})"
                )
        try:
            return factory(**params)
        except ConfigError:
            raise
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{where}{self.kind} {name!r}: {error}") from None
