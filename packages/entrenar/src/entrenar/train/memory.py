"""What the training process holds in memory, from the operating system and torch's CUDA allocator.

Resident set size from ``/proc/self/statm`` (None where there is no ``/proc``), its peak from ``getrusage``; on CUDA,
torch's allocated, reserved and peak allocated bytes.
"""

from __future__ import annotations

import os
import resource
import sys
from pathlib import Path

import torch

__all__ = ["peak_memory", "process_memory"]


def process_memory(device: torch.device) -> dict[str, int | None]:
    """``rss_bytes``, ``peak_rss_bytes`` of this process; ``cuda_allocated_bytes``, ``cuda_reserved_bytes`` on CUDA
    (else None)."""
    try:
        pages = int(Path("/proc/self/statm").read_text(encoding="ascii").split()[1])
        rss: int | None = pages * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        rss = None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak *= 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    peak = max(peak, rss or 0)  # the kernel counts the two a little differently
    cuda = device.type == "cuda"
    return {
        "rss_bytes": rss,
        "peak_rss_bytes": peak,
        "cuda_allocated_bytes": torch.cuda.memory_allocated(device) if cuda else None,
        "cuda_reserved_bytes": torch.cuda.memory_reserved(device) if cuda else None,
    }


def peak_memory(device: torch.device) -> int:
    """The most memory the run has held: CUDA's peak allocated bytes on a GPU, else the process's peak RSS."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(process_memory(device)["peak_rss_bytes"] or 0)
