import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

# Triton kernels run in Triton's interpreter without a GPU. `triton.jit` reads the variable when a kernel module is
# imported, so it is set here, before any test module (or torch.compile) can import one.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# DeepSpeed's JIT ops in this environment's own directory, as the Makefile builds them and the trainer looks for them.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory):
    """A small generated COCO-laid-out dataset, shared read-only by the session's tests."""
    from ssd_ds.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("synth") / "coco", num_train=48, num_val=16, seed=0, workers=1)


@pytest.fixture
def dataset_copy(synthetic_dataset, tmp_path):
    """A private copy of the generated dataset, for tests that damage it."""
    return shutil.copytree(synthetic_dataset, tmp_path / "coco")
