"""Prometheus text exposition (format 0.0.4), written by hand: a few gauges, counters and one histogram.

Everything is read at scrape time from where it lives (the app database, Redis, Optuna's database), so
every API process reports the same numbers and nothing is lost on restart. Score cache hits and misses
are counters in Redis that the workers increment (keys in api.broker).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence

# trials take seconds (tiny models) to an hour (large ones)
TRIAL_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value)) if isinstance(value, float) and not value.is_integer() else str(int(value))


class Exposition:
    """Accumulates metric families and renders them."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def family(
        self, name: str, kind: str, help_text: str, samples: Iterable[tuple[Mapping[str, str], float]]
    ) -> None:
        self._lines.append(f"# HELP {name} {help_text}")
        self._lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            self._lines.append(f"{name}{_labels(labels)} {_number(value)}")

    def histogram(
        self, name: str, help_text: str, observations: Sequence[float], buckets: Sequence[float]
    ) -> None:
        ordered = sorted(observations)
        self._lines.append(f"# HELP {name} {help_text}")
        self._lines.append(f"# TYPE {name} histogram")
        for bound in [*buckets, float("inf")]:
            count = bisect.bisect_right(ordered, bound)
            self._lines.append(f'{name}_bucket{{le="{_number(float(bound))}"}} {count}')
        self._lines.append(f"{name}_sum {_number(float(sum(ordered)))}")
        self._lines.append(f"{name}_count {len(ordered)}")

    def render(self) -> str:
        return "\n".join(self._lines) + "\n"
