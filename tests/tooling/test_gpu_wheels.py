"""scripts/gpu/gpu_wheels.sh carries what the GPU machine lacks: every third-party package the project imports is
either in that machine's image (the script's IMAGE_PACKAGES) or carried as a wheel (its CARRIED_WHEELS). No network."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu" / "gpu_wheels.sh"
SCANNED = ("ssd_ds", "triton_kernels", "tests", "scripts")  # the trainer, the tests and benchmarks run on the GPU
FIRST_PARTY = {"ssd_ds", "triton_kernels", "tests"}

# Import name -> distribution name, where they differ by more than '_' / '-' and case.
DIST_OF_MODULE = {
    "PIL": "pillow",
    "yaml": "pyyaml",
    "cpuinfo": "py-cpuinfo",
    "google": "protobuf",
    "absl": "absl-py",
    "pynvml": "nvidia-ml-py",
    "cv2": "opencv-python-headless",
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
    "dateutil": "python-dateutil",
    "attr": "attrs",
}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def block(name: str) -> str:
    """The text between the script's `# >>> name` and `# <<< name` lines."""
    m = re.search(rf"^# >>> {name}\n(.*?)^# <<< {name}$", SCRIPT.read_text(), re.S | re.M)
    assert m, f"{SCRIPT.name} has no '{name}' block"
    return re.sub(r"#.*", "", m.group(1))  # comments out


def carried() -> dict[str, str]:
    specs = re.findall(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)\s*$", block("carried-wheels"), re.M)
    return {canonical(n): v for n, v in specs}


def image() -> set[str]:
    body = block("image-packages")
    names = body[body.index("(") + 1 : body.rindex(")")].split()
    return {canonical(n) for n in names}


def third_party_imports(root: Path = ROOT) -> dict[str, list[str]]:
    """Top-level modules imported anywhere (functions included) under root's SCANNED folders -> the files importing
    them."""
    found: dict[str, list[str]] = {}
    for top in SCANNED:
        for path in sorted((root / top).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    mod = name.split(".")[0]
                    if mod not in sys.stdlib_module_names and mod not in FIRST_PARTY and mod != "__future__":
                        files = found.setdefault(mod, [])
                        rel = str(path.relative_to(root))
                        if rel not in files:
                            files.append(rel)
    return found


def test_lists_parse():
    wheels, img = carried(), image()
    assert {"deepspeed", "pycocotools", "mlperf-logging", "pydantic"} <= set(wheels)
    assert {"torch", "torchvision", "triton", "numpy", "tensorboard", "pytest"} <= img
    assert len(img) > 100


def not_available(imports: dict[str, list[str]]) -> dict[str, list[str]]:
    available = image() | set(carried())
    return {
        mod: files[:3] for mod, files in imports.items() if canonical(DIST_OF_MODULE.get(mod, mod)) not in available
    }


def test_every_third_party_import_is_in_the_image_or_carried():
    imports = third_party_imports()
    assert {"torch", "deepspeed", "pycocotools", "mlperf_logging", "PIL"} <= set(imports)  # the scan sees the project
    missing = not_available(imports)
    assert not missing, f"imported, but neither in the GPU image nor in gpu_wheels.sh's CARRIED_WHEELS: {missing}"


def test_carried_pins_match_constraints_txt():
    """The GPU machine runs what CI tested: each carried wheel at the version constraints.txt pins."""
    wheels = carried()
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        m = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        if m:
            pins[canonical(m[1])] = m[2]
    assert {"deepspeed", "pycocotools", "mlperf-logging"} <= set(pins)
    for name, version in wheels.items():
        assert pins.get(name) == version, f"{name}: carried {version}, constraints.txt pins {pins.get(name)}"


@pytest.mark.parametrize("dist", sorted(carried()))
def test_carried_requirements_are_met(dist):
    """Each carried package's runtime requirements (as installed here) are carried or in the image."""
    from packaging.requirements import Requirement

    try:
        requires = importlib.metadata.requires(dist) or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{dist} is not installed here")
    env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux", "extra": ""}
    available = image() | set(carried())
    unmet = []
    for line in requires:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(env):
            if canonical(req.name) not in available:
                unmet.append(str(req))
    assert not unmet, f"{dist} needs {unmet}: add them to CARRIED_WHEELS"


def test_an_uncovered_import_is_reported(tmp_path):
    """The check is not vacuous: a package neither in the image nor carried, imported even inside a function, is
    reported; stdlib, first-party and relative imports are not."""
    (tmp_path / "ssd_ds").mkdir()
    (tmp_path / "ssd_ds" / "x.py").write_text(
        "import os, json\nfrom . import y\nfrom ssd_ds import z\nimport torch.nn\nfrom PIL import Image\n"
        "def f():\n    import not_a_real_pkg.sub\n"
    )
    imports = third_party_imports(tmp_path)
    assert set(imports) == {"torch", "PIL", "not_a_real_pkg"}
    assert not_available(imports) == {"not_a_real_pkg": ["ssd_ds/x.py"]}
