"""Pausing the garbage collector around the log's bulk work, scoped to a `with` block."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No garbage collection inside the `with` block (the collector is process-wide, so keep
    the block to CPU work on the log's own objects). A block of the log is thousands of
    short-lived lists and tuples that die by reference count, and a parsed piece millions:
    a collection meanwhile would only walk them (what that saves: docs/performance.md).
    Re-enabled on the way out only if it was enabled on the way in."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
