#!/usr/bin/env bash
# Install sizes and times: the light install and the [train] one, each into a fresh venv.
# Usage: bash bench/install_size.sh   (from the repository root; takes 3-4 minutes)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for kind in light train; do
    python3 -m venv "$work/$kind"
    "$work/$kind/bin/python" -m pip install --quiet --upgrade pip
    spec="$root"
    [ "$kind" = train ] && spec="$root[train]"
    start=$(date +%s)
    "$work/$kind/bin/python" -m pip install --quiet --compile "$spec" 2>/dev/null
    echo "$kind: $(( $(date +%s) - start )) s, $(du -sm "$work/$kind" | cut -f1) MiB"
done
