"""Layout-only runs: a backend's Python code run for its allocations alone, with no kernel started.

The operators' fake implementations (what ``torch.compile`` traces with) run a backend's own forward and backward
inside its :class:`LayoutOnly` switch, so the fake outputs have the real shapes and strides and cannot drift from
them.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch


class LayoutOnly:
    """A backend's switch: ``with switch():`` turns it on for the block (nesting restores the previous state);
    ``switch.active`` says whether kernels must not start. Inside ``with switch.recording() as skipped:`` it is on
    and the backend appends what it would have started to ``skipped`` (``switch.skipped``; None when not
    recording)."""

    def __init__(self) -> None:
        self.active = False
        self.skipped: list | None = None

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        previous, self.active = self.active, True
        try:
            yield
        finally:
            self.active = previous

    @contextlib.contextmanager
    def recording(self) -> Iterator[list]:
        """Layout-only, listing the skipped launches (for tools that inspect the kernels a run would start)."""
        previous, self.skipped = self.skipped, []
        try:
            with self():
                yield self.skipped
        finally:
            self.skipped = previous


def gradient_layouts(inputs: Iterable[torch.Tensor | None]) -> tuple[torch.Tensor | None, ...]:
    """Uninitialised tensors shaped, typed and placed as ``inputs`` (None stays None): the layout of gradients that
    come back contiguous in their inputs' dtypes."""
    return tuple(None if t is None else torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in inputs)
