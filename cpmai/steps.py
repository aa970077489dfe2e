"""Timed steps: what a long operation did, in order, for the CLI to show (the core never prints)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Step:
    name: str
    seconds: float = 0.0
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.name, "seconds": round(self.seconds, 6), "note": self.note}


@dataclass
class StepLog:
    steps: list[Step] = field(default_factory=list)

    @contextmanager
    def step(self, name: str) -> Iterator[Step]:
        """Time the block; the caller may set `.note` on the yielded step."""
        current = Step(name)
        start = time.perf_counter()
        try:
            yield current
        finally:
            current.seconds = time.perf_counter() - start
            self.steps.append(current)
