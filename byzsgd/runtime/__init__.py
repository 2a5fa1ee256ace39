"""Runtimes host protocol nodes and move their messages: in one process, or on Ray."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping


def run(config, monitor) -> dict:  # noqa: ANN001 - ExperimentConfig, Monitor
    """Run the experiment on the configured runtime; returns runtime facts for the summary."""
    if config.runtime == "local":
        from byzsgd.runtime.local import run_local

        return run_local(config, monitor)
    from byzsgd.runtime.ray import run_ray

    return run_ray(config, monitor)


def counters_row(sent: Mapping[str, int], rejections: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """Message counters as the metrics report them; pass only correct nodes' rejections. The Ray
    runtime also counts its ``deliver`` calls (``ray_calls``: fewer than messages when batched)."""
    rejected: Counter[str] = Counter()
    for counts in rejections:
        rejected.update(counts)
    calls = {"ray_calls": sent["ray_calls"]} if "ray_calls" in sent else {}
    return {
        "messages": sent.get("messages", 0),
        "bytes": sent.get("bytes", 0),
        **calls,
        "byzantine_messages": sent.get("byzantine_messages", 0),
        "rejected": sum(rejected.values()),
        **{f"rejected_{reason}": count for reason, count in sorted(rejected.items())},
    }
