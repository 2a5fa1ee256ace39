"""Name -> implementation lookups, so YAML can select aggregators, attacks and protocols."""

from __future__ import annotations

import inspect
import math
import numbers
import types
import typing
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
        where = f"{field}: " if field else ""
        try:
            factory = self[name]
        except ConfigError as error:
            raise ConfigError(f"{where}{error}") from None
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
        for key, value in params.items():
            problem = param_type_problem(parameter_hints(factory).get(key), value)
            if problem:
                raise ConfigError(f"{where}{self.kind} {name!r}: parameter {key}={value!r}: {problem}")
        try:
            return factory(**params)
        except ConfigError:
            raise
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{where}{self.kind} {name!r}: {error}") from None


def parameter_hints(factory: Any) -> dict[str, Any]:
    """The type hints of a factory's parameters ({} where they cannot be resolved)."""
    try:
        return typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory)
    except Exception:  # noqa: BLE001 - hints are a convenience; the factory still checks its input
        return {}


def param_type_problem(hint: Any, value: Any) -> str | None:
    """Why ``value`` does not fit a simple hint (int, float, bool, str, optionally None), or None.

    A parameter from YAML reaches the factory as is; checking it against the declared type
    turns a wrong type or a NaN into a load-time error instead of a failure at the first step.
    Other hints (Any, mappings, unions of several types) are left to the factory."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None and len(inner) < len(typing.get_args(hint)):
            return None
        hint = inner[0] if len(inner) == 1 else None
    if hint is bool:
        return None if isinstance(value, bool) else "expected true or false"
    if hint is int:
        return None if isinstance(value, numbers.Integral) and not isinstance(value, bool) else "expected an integer"
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return "expected a number"
        return None if abs(value) < 2**1000 and math.isfinite(value) else "expected a finite number"
    if hint is str:
        return None if isinstance(value, str) else "expected a string"
    return None
