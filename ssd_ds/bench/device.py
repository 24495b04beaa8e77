"""What the benchmarks ask of the device they time on: its name for a header line, a synchronisation before each
clock read, and its dense bf16 peak for the utilisation column."""

from __future__ import annotations

import torch

# Dense bf16 tensor-core peak per GPU (vendor datasheets, SXM parts), for the utilisation column.
BF16_PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0}


def bf16_peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in name), None)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU with the threads torch uses now."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a host clock read after it times that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
