"""How a peer benchmark prints its metrics when run alone (``python -m benchmarks.peer_<name>``)."""

from __future__ import annotations


def print_table(metrics: dict[str, float]) -> None:
    width = max(len(name) for name in metrics)
    print(f"{'metric':<{width}}  value")
    for name, value in metrics.items():
        print(f"{name:<{width}}  {value:10.2f}")
