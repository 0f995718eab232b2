#!/usr/bin/env bash
# Usage: python-component.sh NAME CONTRACT WORLD [OUT.wasm]
# Builds the Python plugin plugins/NAME (its app.py) against contract
# CONTRACT's world WORLD into OUT (default <repo>/target/plugins/NAME.wasm),
# skipped when OUT is newer than app.py, the build scripts and every WIT
# file, so tests can call it before every run. Each Python plugin's
# build.sh names its own three.
set -euo pipefail

name="$1" CONTRACT="$2" world="$3"
shift 3
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
here="$repo/plugins/$name"
wit="$repo/wit"
if ! grep -q "^package gale:plugin@$CONTRACT;" "$wit/types.wit"; then
    wit="$repo/wit/previous/$CONTRACT"
fi
out="${1:-$repo/target/plugins/$name.wasm}"

"$here/toolchain.sh"
tool="${GALE_TOOLCHAINS:-$repo/target/toolchains}/python/bin/componentize-py"

# Up to date: OUT exists and nothing it is built from is newer. The
# toolchain script counts too: it holds the pinned componentize-py version
# (one for every Python plugin; the others' toolchain.sh run this one).
toolchain="$repo/plugins/least-active-python/toolchain.sh"
if [ -f "$out" ] && [ -z "$(find "$here/app.py" "$here/build.sh" "$toolchain" "${BASH_SOURCE[0]}" "$wit" \
        -type f \( -name '*.py' -o -name '*.sh' -o -name '*.wit' \) -newer "$out" -print -quit)" ]; then
    echo "$name: $out is up to date" >&2
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
# imports none of it (gale would grant only clocks, random and cli, and
# CPython's other imports, files and sockets, would only trap if called).
# The cost, per componentize-py: the build-time random seed is baked in
# (gale's Python plugins use no randomness).
VIRTUAL_ENV="$(dirname "$(dirname "$tool")")" \
    "$tool" --quiet -d "$wit" -w "$world" componentize --stub-wasi -p "$work" app -o "$tmp"
mv "$tmp" "$out"
echo "$name: built $out ($(stat -c %s "$out") bytes) in $(( ($(date +%s%N) - start) / 1000000 )) ms" >&2
