"""User code by import path: plugin modules, model and dataset factories, registration decorators.

- ``plugins: [pkg.module, ...]`` names modules imported before anything is built, in the driver
  and in every Ray actor and sweep process, so the aggregators, attacks and protocols they
  register exist wherever a config is read (:func:`load_plugins`).
- ``model.name`` / ``data.dataset`` of the form ``"pkg.module:attr"`` name a factory
  (:func:`resolve_callable`).
- :func:`register_aggregator` and :func:`register_attack` turn a plain function (or a class) into
  a rule or an attack selectable by name from YAML; ``byzsgd`` re-exports both.

Ray workers find a plugin through ``PYTHONPATH`` (a local Ray inherits the driver's environment;
on a cluster, ship the module with the job's working directory); sweep processes are spawned
with the driver's ``sys.path``.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from byzsgd.registry import ConfigError


def is_import_path(name: str) -> bool:
    """Whether a model or dataset name names a factory (``pkg.module:attr``) instead of a built-in."""
    return ":" in name


def import_module(name: str, field: str) -> Any:
    """Import module ``name``; a missing module (or one failing to import) is a ConfigError naming ``field``."""
    if not isinstance(name, str) or not name or not all(part.isidentifier() for part in name.split(".")):
        raise ConfigError(f"{field}: {name!r} is not a module name like pkg.module")
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name is not None and name.startswith(error.name):  # the module itself, not one it imports
            raise ConfigError(f"{field}: no module named {name!r} (is its folder on PYTHONPATH?)") from None
        raise ConfigError(f"{field}: importing {name!r} failed: {error}") from None
    except ConfigError:
        raise
    except Exception as error:  # noqa: BLE001 - any failure of user code at import is reported the same way
        raise ConfigError(f"{field}: importing {name!r} failed: {type(error).__name__}: {error}") from None


def load_plugins(names: Iterable[str] | None, field: str = "plugins") -> None:
    """Import each plugin module (idempotent: Python imports a module once per process)."""
    if names is None:
        return
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise ConfigError(f"{field}: expected a list of module names, got {names!r}")
    for index, name in enumerate(names):
        import_module(name, f"{field}[{index}]")


def resolve_callable(spec: str, field: str) -> Callable[..., Any]:
    """The callable named by ``"pkg.module:attr"`` (``attr`` may be dotted: ``Class.method``)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"{field}: {spec!r} is not an import path like pkg.module:function")
    target: Any = import_module(module_name, field)
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"{field}: module {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(f"{field}: {spec!r} is not callable")
    return target


def check_call(factory: Callable[..., Any], field: str, what: str, *args: Any, **params: Any) -> None:
    """ConfigError unless ``factory(*args, **params)`` matches its signature (checked without calling)."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin without a signature: the call itself will tell
        return
    try:
        signature.bind(*args, **params)
    except TypeError as error:
        raise ConfigError(f"{field}: {what} {getattr(factory, '__name__', factory)!r}{signature}: {error}") from None


# --- registration ------------------------------------------------------------------------


def _extra_parameters(fn: Callable[..., Any], leading: int, who: str) -> list[inspect.Parameter]:
    """The keyword parameters of ``fn`` after its ``leading`` positional ones; TypeError if it has fewer."""
    parameters = list(inspect.signature(fn).parameters.values())
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < leading and not any(p.kind is p.VAR_POSITIONAL for p in parameters):
        raise TypeError(f"{who}: {fn.__name__}{inspect.signature(fn)} must take {leading} positional arguments")
    rest = parameters[leading:] if len(positional) >= leading else []
    return [p.replace(kind=p.KEYWORD_ONLY) if p.kind is not p.VAR_KEYWORD else p for p in rest]


def _register_function(registry: Any, name: str, fn: Callable[..., Any], base: type, members: dict[str, Any]) -> Any:
    """Register ``fn`` under ``name`` as a subclass of ``base`` with ``members``, documented by ``fn``'s
    docstring (what ``byzsgd list`` shows); returns ``fn``, so the decorated function stays callable."""
    namespace = {**members, "__doc__": fn.__doc__, "__module__": fn.__module__}
    registry.register(name, replace=True)(type(f"Function{base.__name__}_{fn.__name__}", (base,), namespace))
    return fn


def register_aggregator(name: str, *, bound: tuple[int, int] = (0, 1)) -> Callable[[Any], Any]:
    """Register an aggregation rule under ``name`` (``aggregator.name`` in YAML).

    On a function ``fn(vectors, f, **params) -> (d,)``: ``vectors`` is an (n, d) floating torch
    tensor holding finite rows only, ``f`` how many of them may be Byzantine; extra keyword
    parameters come from ``aggregator.params``. ``bound=(a, b)`` declares that the rule needs
    n >= a*f + b inputs (checked when the config is validated). The library's non-finite
    filtering, input conversion and n-vs-f checks apply as for the built-in rules.

    On a subclass of :class:`byzsgd.aggregators.Aggregator`: registers it as is."""
    from byzsgd.aggregators.base import AGGREGATORS, Aggregator

    def add(target: Any) -> Any:
        if isinstance(target, type):
            if not issubclass(target, Aggregator):
                raise TypeError(f"register_aggregator({name!r}): {target.__name__} is not an Aggregator subclass")
            target.name = name
            AGGREGATORS.register(name, replace=True)(target)
            return target
        extra = _extra_parameters(target, 2, f"register_aggregator({name!r})")
        fn = target

        def __init__(self: Aggregator, f: int, **params: Any) -> None:
            Aggregator.__init__(self, f)
            self.params = params

        def _aggregate(self: Aggregator, x: torch.Tensor, f: int, **options: Any) -> torch.Tensor:
            out = torch.as_tensor(fn(x, f, **self.params))
            if out.shape != x.shape[1:]:
                raise ValueError(f"aggregator {name!r} returned shape {tuple(out.shape)}, expected ({x.shape[1]},)")
            return out

        init_signature = inspect.Signature(
            [
                inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
                inspect.Parameter("f", inspect.Parameter.POSITIONAL_OR_KEYWORD),
                *extra,
            ]
        )
        __init__.__signature__ = init_signature  # type: ignore[attr-defined]  # parameter checks see fn's
        members = {"__init__": __init__, "_aggregate": _aggregate, "bound": tuple(bound), "name": name}
        return _register_function(AGGREGATORS, name, fn, Aggregator, members)

    return add


def register_attack(name: str, *, omniscient: bool = False, per_receiver: bool = False) -> Callable[[Any], Any]:
    """Register an attack under ``name`` (``attack.name`` / ``server_attack.name`` in YAML).

    On a function ``fn(honest, context, **params) -> vector | None``: ``honest`` is the float32
    vector the Byzantine node would honestly send (a gradient for workers, a model for servers),
    ``context`` a :class:`byzsgd.attacks.AttackContext` (sender, receiver, round, a seeded
    ``rng``, and with ``omniscient=True`` the correct nodes' vectors of the round in
    ``context.observed``); return what the node sends instead, or None to send nothing. Extra
    keyword parameters come from ``attack.params``.

    On a subclass of :class:`byzsgd.attacks.Attack`: registers it as is."""
    from byzsgd.attacks.base import ATTACKS, Attack, AttackContext, as_payload

    def add(target: Any) -> Any:
        if isinstance(target, type):
            if not issubclass(target, Attack):
                raise TypeError(f"register_attack({name!r}): {target.__name__} is not an Attack subclass")
            ATTACKS.register(name, replace=True)(target)
            return target
        extra = _extra_parameters(target, 2, f"register_attack({name!r})")
        fn = target

        def __init__(self: Attack, **params: Any) -> None:
            self.params = params

        def __call__(self: Attack, honest: np.ndarray, context: AttackContext) -> np.ndarray | None:
            out = fn(honest, context, **self.params)
            if out is None:
                return None
            if isinstance(out, torch.Tensor):
                out = out.detach().cpu().numpy()
            out = as_payload(out)
            if out.shape != np.shape(honest):
                raise ValueError(f"attack {name!r} returned shape {out.shape}, expected {np.shape(honest)}")
            return out

        __init__.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD), *extra]
        )
        members = {"__init__": __init__, "__call__": __call__, "omniscient": omniscient, "per_receiver": per_receiver}
        return _register_function(ATTACKS, name, fn, Attack, members)

    return add
