"""Peak extra memory of one call: the most bytes allocated at once above the level at its start.

CUDA: ``torch.cuda.max_memory_allocated``. CPU: torch has no allocator statistics, so the call runs
under the torch profiler with ``profile_memory=True`` and the allocation/free events (every
tensor allocation, also inside ops and in autograd's backward) are summed in time order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

__all__ = ["peak_extra_bytes"]


def _walk(nodes: list[Any]) -> Iterator[Any]:
    for node in nodes:
        yield node
        yield from _walk(node.children)


def peak_extra_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes allocated by ``fn()`` (and not freed before the peak), above the level at its start."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        held = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - held
    from torch._C._profiler import _EventType  # the profiler's event tree; no public equivalent on CPU

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in _walk(prof.profiler.kineto_results.experimental_event_tree()) if e.tag == _EventType.Allocation]
    events.sort(key=lambda e: e.start_time_ns)
    level = peak = 0
    for event in events:
        if event.extra_fields.device.type == "cpu":
            level += event.extra_fields.alloc_size  # negative for a free
            peak = max(peak, level)
    return peak
