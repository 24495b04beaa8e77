#!/usr/bin/env bash
# Fill .whl/ with the wheels that the GPU image we test against lacks, for scripts/gpu/gpu_check.sh on a GPU machine
# without network access.
#
# Why: that image (Python 3.12, torch 2.11, triton 3.6, numpy 2.x, tensorboard, ... see IMAGE_PACKAGES) has no
# deepspeed, pycocotools or mlperf-logging, and the machine can reach no package registry. So the packages the
# trainer, its tests and the benchmarks import that the image lacks go to the GPU machine with the working tree, as
# wheels in .whl/ (git-ignored; kept under 64 MiB in all so that the copy stays small), and there they are
# installed with
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
#     && export PYTHONPATH=/tmp/site
# (deepspeed's CLI then lies in /tmp/site/bin.)
#
# How: on a machine that reaches PyPI, from any directory:  scripts/gpu/gpu_wheels.sh
# It clears .whl/, downloads the cp312 manylinux x86_64 (or pure-Python) wheels of CARRIED_WHEELS, builds deepspeed's
# wheel from its sdist with the project's .venv (DS_BUILD_OPS=0: pure Python, ops JIT-built on the GPU machine), then
# checks the set: one wheel of each listed package at its pinned version and no other, every wheel installable on
# CPython 3.12 manylinux x86_64, every runtime requirement met by the set or the image, under 64 MiB in all. It prints
# each wheel with its size and exits 1 if a check fails. Idempotent. tests/tooling/test_gpu_wheels.py reads the two lists
# below (keep their markers) and checks that every third-party import of the project is in one of them.
#   PYTHON=python3 (downloads, pip >= 22.2)   DS_BUILD_PYTHON=.venv/bin/python (needs torch, setuptools, packaging)
set -euo pipefail
cd "$(dirname "$0")/../.."

# Wheels to carry: NAME==VERSION, one a line, at the versions constraints.txt pins (what CI tests).
# >>> carried-wheels
CARRIED_WHEELS=(
  deepspeed==0.19.8          # sdist only on PyPI: built here (py3-none-any)
  hjson==3.1.0               # deepspeed
  pydantic==2.14.4           # deepspeed (config models)
  pydantic-core==2.50.5      # pydantic
  annotated-types==0.8.0     # pydantic
  typing-inspection==0.4.5   # pydantic
  typing-extensions==4.16.0  # in the image, version unknown; pydantic and pydantic-core need >= 4.16.0
  pycocotools==2.0.11        # ssd_ds.evaluate, ssd_ds.data.shapes, tests
  faster-coco-eval==1.8.0    # ssd_ds.coco_eval (--coco_eval faster; needs numpy: in the image)
  hotcoco==1.3.0             # ssd_ds.coco_eval (the default COCOeval and the error breakdown; needs numpy)
  mlperf-logging==4.1.68     # ssd_ds.mlperf_log, ssd_ds.train (needs pandas, pyyaml, numpy, scipy: in the image)
)
# <<< carried-wheels

# Distributions the H200 image holds (its package list as of 2026-11-17; versions are not known beyond torch 2.11.0,
# torchvision 0.26.0, triton 3.6.0, numpy 2.5.2).
# >>> image-packages
IMAGE_PACKAGES=(
  absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
  charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
  cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
  formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
  imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
  lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
  matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
  networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
  nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
  nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
  opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy
  peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
  pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
  pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core
  scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
  sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile
  tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
  transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel
  wrapt xarray xxhash yarl zipp
)
# <<< image-packages

PY="${PYTHON:-python3}"
DS_PY="${DS_BUILD_PYTHON:-.venv/bin/python}"
WHL=.whl
LIMIT_MIB=64
# The image's python3 is 3.12.3 in a virtual environment on Ubuntu 24.04 (glibc 2.39): any manylinux_2_N, N <= 39,
# runs.
PLATFORMS=(manylinux_2_35_x86_64 manylinux_2_34_x86_64 manylinux_2_31_x86_64 manylinux_2_28_x86_64
  manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64)
PLATFORM_ARGS=()
for p in "${PLATFORMS[@]}"; do PLATFORM_ARGS+=(--platform "$p"); done
# pip's answers without the warnings of a pip config that names local indexes which are absent.
quiet_pip() { "$@" 2> >(grep -v "^WARNING: Location 'file://" >&2); }

t0=$SECONDS
if git rev-parse --git-dir > /dev/null 2>&1 && ! git check-ignore -q "$WHL/"; then
  echo "gpu_wheels: $WHL/ is not git-ignored; add '$WHL/' to .gitignore" >&2
  exit 1
fi
"$DS_PY" -c "import torch, setuptools, packaging" || {
  echo "gpu_wheels: $DS_PY lacks torch/setuptools/packaging (deepspeed's build needs them); set DS_BUILD_PYTHON" >&2
  exit 1
}

rm -rf "$WHL"
mkdir -p "$WHL"

DS_SPEC=""
DOWNLOAD=()
for spec in "${CARRIED_WHEELS[@]}"; do
  case $spec in
    deepspeed==*) DS_SPEC=$spec ;;
    *) DOWNLOAD+=("$spec") ;;
  esac
done

echo "gpu_wheels: downloading ${#DOWNLOAD[@]} wheels for CPython 3.12 manylinux x86_64"
quiet_pip "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --abi cp312 --abi abi3 --abi none "${PLATFORM_ARGS[@]}" -d "$WHL" "${DOWNLOAD[@]}"

if [[ -n $DS_SPEC ]]; then
  echo "gpu_wheels: building $DS_SPEC from its sdist (DS_BUILD_OPS=0)"
  DS_BUILD_OPS=0 quiet_pip "$DS_PY" -m pip wheel -q --no-deps --no-build-isolation --no-cache-dir \
    --no-binary deepspeed -w "$WHL" "$DS_SPEC" > /dev/null
fi

# Check the set; print it. Exit 1 on any problem.
CARRIED="${CARRIED_WHEELS[*]}" IMAGE="${IMAGE_PACKAGES[*]}" PLATFORMS="${PLATFORMS[*]}" LIMIT_MIB=$LIMIT_MIB \
  "$DS_PY" - "$WHL" << 'EOF'
import os, sys, zipfile
from email.parser import HeaderParser
from pathlib import Path
from packaging.requirements import Requirement
from packaging.tags import compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

whl = Path(sys.argv[1])
pins = {canonicalize_name(n): Version(v) for n, v in (s.split("==") for s in os.environ["CARRIED"].split())}
image = {canonicalize_name(n) for n in os.environ["IMAGE"].split()}
platforms = os.environ["PLATFORMS"].split()
supported = set(cpython_tags((3, 12), platforms=platforms)) | set(compatible_tags((3, 12), "cp312", platforms))
# The GPU machine's environment, for requirement markers.
env = dict(python_version="3.12", python_full_version="3.12.3", implementation_name="cpython",
           platform_python_implementation="CPython", sys_platform="linux", platform_system="Linux",
           platform_machine="x86_64", os_name="posix", extra="")
errors, found, total = [], {}, 0
for f in sorted(whl.glob("*.whl")):
    name, version, _, tags = parse_wheel_filename(f.name)
    size = f.stat().st_size
    total += size
    print(f"  {size / 2**20:8.2f} MiB  {f.name}")
    found.setdefault(name, []).append(version)
    if not tags & supported:
        errors.append(f"{f.name}: no tag installable on CPython 3.12 manylinux x86_64")
    if name not in pins:
        errors.append(f"{f.name}: not in CARRIED_WHEELS")
    elif version != pins[name]:
        errors.append(f"{f.name}: version {version}, pinned {pins[name]}")
    with zipfile.ZipFile(f) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        headers = HeaderParser().parsestr(z.read(meta).decode())
    for line in headers.get_all("Requires-Dist") or []:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate(env):
            continue  # an extra, or another platform's
        dep = canonicalize_name(req.name)
        if dep in pins:
            if pins[dep] not in req.specifier:
                errors.append(f"{name} needs {req}, carried {dep}=={pins[dep]}")
        elif dep not in image:
            errors.append(f"{name} needs {req}: neither carried nor in the image")
print(f"  {total / 2**20:8.2f} MiB  in {sum(map(len, found.values()))} wheels")
for name, versions in found.items():
    if len(versions) > 1:
        errors.append(f"{name}: {len(versions)} versions ({', '.join(map(str, versions))})")
errors += [f"{name}: no wheel" for name in pins if name not in found]
if total >= int(os.environ["LIMIT_MIB"]) * 2**20:
    errors.append(f"{total / 2**20:.2f} MiB in all: the limit is {os.environ['LIMIT_MIB']} MiB")
for e in errors:
    print(f"gpu_wheels: {e}", file=sys.stderr)
sys.exit(1 if errors else 0)
EOF

# pip's own word that the set installs on the GPU machine's Python, as the install command there does it.
dry=$(mktemp -d)
trap 'rm -rf "$dry"' EXIT
quiet_pip "$PY" -m pip install -q --dry-run --no-deps --no-index --ignore-installed --only-binary=:all: \
  --python-version 3.12 --implementation cp "${PLATFORM_ARGS[@]}" --target "$dry" "$WHL"/*.whl
echo "gpu_wheels: ok, $(ls "$WHL"/*.whl | wc -l) wheels in $WHL/ ($((SECONDS - t0)) s)"
