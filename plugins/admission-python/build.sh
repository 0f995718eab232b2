#!/usr/bin/env bash
# Usage: build.sh [OUT.wasm]
# Builds the plugin into OUT (default <repo>/target/plugins/admission-python.wasm),
# skipped when OUT is newer than app.py, this script and every WIT file, so
# tests can call it before every run.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# Build against contract 0.1.3, the first with the admission world; later
# 0.1.x hosts load it too (rule 1 in wit/types.wit). Once wit/ has moved
# on, 0.1.3 lives, frozen, in wit/previous/0.1.3/.
CONTRACT=0.1.3
wit="$repo/wit"
if ! grep -q "^package gale:plugin@$CONTRACT;" "$wit/types.wit"; then
    wit="$repo/wit/previous/$CONTRACT"
fi
out="${1:-$repo/target/plugins/admission-python.wasm}"

"$here/toolchain.sh"
tool="${GALE_TOOLCHAINS:-$repo/target/toolchains}/python/bin/componentize-py"

# Up to date: OUT exists and nothing it is built from is newer. toolchain.sh
# counts too: it holds the pinned componentize-py version.
if [ -f "$out" ] && [ -z "$(find "$here/app.py" "$here/build.sh" "$here/toolchain.sh" "$wit" \
        -type f \( -name '*.py' -o -name '*.sh' -o -name '*.wit' \) -newer "$out" -print -quit)" ]; then
    echo "admission-python: $out is up to date" >&2
    exit 0
fi

mkdir -p "$(dirname "$out")"
# Build from a scratch copy of app.py: componentize-py runs the app once at
# build time (pre-initialisation) and CPython would leave __pycache__ in the
# source dir; and a python path holding only app.py cannot pick up stray
# modules. The bindings (wit_world, componentize_py_types) are generated in
# memory. VIRTUAL_ENV makes it search the toolchain venv's site-packages,
# not whatever the system Python has. Write OUT by rename, so an interrupted
# build never leaves a half-written OUT that looks up to date.
work="$(mktemp -d)"
tmp="$out.tmp.$$"
trap 'rm -rf "$work" "$tmp"' EXIT
cp "$here/app.py" "$work/"
start=$(date +%s%N)
# --stub-wasi: the plugin needs nothing from WASI, so the component
# imports none of it. The cost, per componentize-py: the build-time random
# seed is baked in (this plugin uses no randomness).
VIRTUAL_ENV="$(dirname "$(dirname "$tool")")" \
    "$tool" --quiet -d "$wit" -w admission componentize --stub-wasi -p "$work" app -o "$tmp"
mv "$tmp" "$out"
echo "admission-python: built $out ($(stat -c %s "$out") bytes) in $(( ($(date +%s%N) - start) / 1000000 )) ms" >&2
