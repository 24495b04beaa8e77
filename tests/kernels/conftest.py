"""Kernel tests: every op against its torch reference, on CUDA when there is a GPU, else in Triton's interpreter.

TRITON_INTERPRET must be set before a kernel module is imported (`triton.jit` reads it then), hence at the top of
this file, which pytest imports before the test modules beside it. Tests marked `cuda` (real sizes: A = 8732,
C = 81) are skipped without a GPU; everything else uses small shapes so that the interpreter stays quick.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

# One tolerance table for every kernel test, keyed by the dtype of the tensors compared. Kernel and reference both
# compute in fp32 from the same inputs; fp32 differences come from summation order and exp/log rounding, and a
# half-precision gradient may round to the neighbouring value (2 ulps: 2^-6 relative for bf16, 2^-9 for fp16).
TOLERANCES = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float16: dict(atol=1e-6, rtol=4e-3),
    torch.bfloat16: dict(atol=1e-6, rtol=1.6e-2),
}


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU; real sizes (skipped without one)")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def assert_close():
    """assert_close(got, want): compares with the table's tolerance for want's dtype (got's dtype must match)."""

    def check(got: torch.Tensor, want: torch.Tensor, msg: str = "") -> None:
        assert got.dtype == want.dtype, f"{msg}: dtype {got.dtype} != {want.dtype}"
        torch.testing.assert_close(got, want, **TOLERANCES[want.dtype], msg=lambda m: f"{msg}: {m}" if msg else m)

    return check
