#!/usr/bin/env bash
# Fetch torchvision's ImageNet ResNet-34 weights, resnet34-333f7ec4.pth (SPEC section 1), into DEST.
#
# usage: scripts/data/download_resnet34.sh [DEST]
#
# DEST is a directory; the default is torch hub's cache, ${TORCH_HOME:-~/.cache/torch}/hub/checkpoints, where
# the model's "imagenet" weights setting looks. The file name carries the first 8 hex digits of its SHA-256
# (torch hub's convention); a download whose hash differs is removed, never left in place.
# Environment: RESNET34_URL (a mirror of the file).
set -euo pipefail

die() { echo "download_resnet34: $*" >&2; exit 1; }

[[ $# -le 1 ]] || { echo "usage: $0 [DEST]" >&2; exit 2; }
name=resnet34-333f7ec4.pth
prefix=333f7ec4
url=${RESNET34_URL:-https://download.pytorch.org/models/$name}
dest=${1:-${TORCH_HOME:-$HOME/.cache/torch}/hub/checkpoints}
file=$dest/$name

sha256_prefix() { sha256sum "$1" | cut -c1-8; }

command -v curl >/dev/null || die "curl is required but not installed"
mkdir -p "$dest"

if [[ -f $file ]]; then
    [[ $(sha256_prefix "$file") == "$prefix" ]] && { echo "$file already present"; exit 0; }
    echo "$file has the wrong SHA-256; fetching it again" >&2
    rm -f "$file"
fi

# Into a temporary name first, so an interrupted or bad download never sits under the final name.
part=$file.part
curl -fL --retry 3 --connect-timeout 20 -o "$part" "$url" \
    || { rm -f "$part"; die "cannot download $url (network unreachable, proxy or DNS?)"; }
got=$(sha256_prefix "$part")
if [[ $got != "$prefix" ]]; then
    rm -f "$part"
    die "SHA-256 of the download starts with $got, expected $prefix; removed it"
fi
mv "$part" "$file"
echo "wrote $file"
