"""Timing a step, one callable, the same way in every tool: untimed warm-up calls, then timed repeats.

On a CUDA device a repeat is timed by two CUDA events, recorded on the current stream before its first call and after
its last: the GPU's time from the first launch to the last kernel's end, including any time it waited for the host.
Elsewhere the wall clock times it. Ways of running the step (compiled, replayed from a CUDA graph, under a profiler)
belong to the caller: it wraps ``step`` before passing it here.
"""
from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Timing:
    """What :func:`time_step` measured.

    ``seconds`` holds one entry per timed repeat: that repeat's time divided by its calls. ``peak_cuda_bytes`` is
    ``torch.cuda.max_memory_allocated`` over the timed repeats (None off CUDA); ``output`` is what the last call
    returned.
    """

    seconds: list[float]
    peak_cuda_bytes: int | None
    output: Any = None

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def min(self) -> float:
        return min(self.seconds)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.seconds)


def time_step(step: Callable[[], Any], device: torch.device | str, *, warmup: int = 0, repeats: int = 1,
              calls: int = 1) -> Timing:
    """Call ``step`` ``warmup`` times untimed, then time ``repeats`` runs of ``calls`` calls each on ``device``."""
    if warmup < 0 or repeats < 1 or calls < 1:
        raise ValueError(f'time_step needs warmup >= 0, repeats >= 1 and calls >= 1; got warmup={warmup}, '
                         f'repeats={repeats}, calls={calls}.')
    device = torch.device(device)
    cuda = device.type == 'cuda'
    output = None
    for _ in range(warmup):
        output = step()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            stream = torch.cuda.current_stream(device)
            start.record(stream)
            for _ in range(calls):
                output = step()
            end.record(stream)
            end.synchronize()
            seconds.append(start.elapsed_time(end) / 1e3 / calls)
        else:
            start_time = time.perf_counter()
            for _ in range(calls):
                output = step()
            seconds.append((time.perf_counter() - start_time) / calls)
    peak = torch.cuda.max_memory_allocated(device) if cuda else None
    return Timing(seconds, peak, output)


def kernel_profile(step: Callable[[], Any], device: torch.device | str, calls: int = 3) -> tuple[float, float]:
    """The GPU kernel time of one call of ``step`` (the sum of its kernels' times, torch.profiler) and its number of
    kernels, means over ``calls`` calls. The time over a timed call's seconds is the GPU-busy fraction, which says
    whether the host keeps the GPU fed; the count is what the host launches a call."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            step()
        torch.cuda.synchronize(device)
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return sum(e.device_time for e in kernels) / 1e6 / calls, len(kernels) / calls


def peak_rss_bytes() -> int:
    """The largest resident memory of this process so far (Linux reports it in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
