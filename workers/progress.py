"""Progress bars per pipeline stage (tqdm on stderr), or none."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Advance = Callable[[int], None]


class Stages:
    """`with stages.stage("search", total=40, unit="trial") as advance: ...` shows one bar per stage."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet

    @contextmanager
    def stage(self, desc: str, total: int | None, unit: str = "step") -> Iterator[Advance]:
        if self.quiet:
            yield lambda n=1: None
            return
        from tqdm import tqdm

        # disable=False, given: the CLI sets TQDM_DISABLE to quiet lm-eval's own bars (its request
        # building has no switch of its own), and tqdm applies that variable only to bars that do not say
        bar = tqdm(
            total=total,
            desc=f"{desc:<10s}",
            unit=unit,
            file=sys.stderr,
            dynamic_ncols=True,
            leave=True,
            disable=False,
        )
        try:
            yield bar.update
        finally:
            bar.close()

    def note(self, message: str) -> None:
        if not self.quiet:
            from tqdm import tqdm

            tqdm.write(message, file=sys.stderr)
