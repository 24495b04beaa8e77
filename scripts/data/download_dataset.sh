#!/usr/bin/env bash
# Download COCO 2017 into DIR (SPEC section 5): DIR/train2017/, DIR/val2017/, DIR/annotations/instances_*.json,
# plus the bbox-only annotation copies (ssd_ds.data.bbox_only).
#
# usage: scripts/data/download_dataset.sh DIR
#
# Rerunnable: partial downloads resume (curl -C -), finished archives are not fetched again, and an archive is
# unpacked again unless its unpack finished (a marker file records that). Each archive is checked against its
# published size and with `unzip -tq` before it is unpacked. About 20 GB of archives and 20 GB unpacked.
# Environment: COCO_BASE_URL (a mirror of images.cocodataset.org), PYTHON (default: the repo's .venv, else python3).
set -euo pipefail

die() { echo "download_dataset: $*" >&2; exit 1; }

[[ $# -eq 1 ]] || { echo "usage: $0 DIR" >&2; exit 2; }
dir=$1
base=${COCO_BASE_URL:-http://images.cocodataset.org}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
python=${PYTHON:-}
if [[ -z $python ]]; then
    if [[ -x $repo/.venv/bin/python ]]; then python=$repo/.venv/bin/python; else python=python3; fi
fi

# name, path under the base URL, size in bytes (COCO publishes sizes, not checksums).
archives=(
    "annotations_trainval2017.zip annotations/annotations_trainval2017.zip 252907541"
    "val2017.zip zips/val2017.zip 815585330"
    "train2017.zip zips/train2017.zip 19336861798"
)

for tool in curl unzip; do
    command -v "$tool" >/dev/null || die "$tool is required but not installed"
done
mkdir -p "$dir"

# Ask once, quickly, so an offline machine fails in seconds with a clear message rather than after retries.
curl -sSfI --connect-timeout 15 --max-time 60 "$base/${archives[0]#* }" >/dev/null 2>&1 \
    || die "cannot reach $base (network unreachable, proxy or DNS?); nothing was downloaded"

fetch() {  # name path size: download (resuming) and verify one archive
    local name=$1 path=$2 size=$3 file=$dir/$1 have=0
    [[ -f $file ]] && have=$(stat -c %s "$file")
    if (( have > size )); then
        die "$file is $have bytes, more than the expected $size; delete it and rerun"
    fi
    if (( have < size )); then
        echo "downloading $name ($size bytes, $have already here)"
        curl -fL --retry 5 --retry-delay 10 --connect-timeout 30 -C - -o "$file" "$base/$path" \
            || die "download of $base/$path failed (network lost?); rerun to resume"
    fi
    have=$(stat -c %s "$file")
    (( have == size )) || die "$file is $have bytes, expected $size; rerun to resume, or delete it if this persists"
}

unpack() {  # name: test and unpack one archive unless a previous run finished it
    local file=$dir/$1 done_marker=$dir/.unpacked-$1
    [[ -f $done_marker ]] && return 0
    echo "testing $1"
    unzip -tq "$file" >/dev/null || die "$file is corrupt (unzip -t failed); delete it and rerun"
    echo "unpacking $1"
    # -o: overwrite, so a file cut short by an interrupted unpack is written again in full.
    unzip -q -o "$file" -d "$dir"
    touch "$done_marker"
}

for entry in "${archives[@]}"; do
    read -r name path size <<<"$entry"
    fetch "$name" "$path" "$size"
done
for entry in "${archives[@]}"; do
    read -r name _ _ <<<"$entry"
    unpack "$name"
done

PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" "$python" -m ssd_ds.data.bbox_only "$dir/annotations"
echo "COCO 2017 ready in $dir"
