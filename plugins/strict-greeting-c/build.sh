#!/usr/bin/env bash
# Build the strict-greeting-c health plugin into a WebAssembly component.
#
#   plugins/strict-greeting-c/build.sh [OUT.wasm]
#
# OUT defaults to <repo>/target/plugins/strict-greeting-c.wasm. Installs the
# toolchain on first use (toolchain.sh), generates the C bindings with
# wit-bindgen into a build directory under target/, compiles with Debian's
# clang for wasm32-wasi and links with the wasm-component-ld that ships with
# the Rust toolchain, which turns the core module into a component. Skipped
# when OUT is newer than plugin.c, these scripts and every WIT file (and was
# built against the same contract).
#
# GALE_PLUGIN_CONTRACT (default 0.1.0) picks the gale:plugin version to build
# against; GALE_TOOLCHAINS (default <repo>/target/toolchains) where
# wit-bindgen is installed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="${1:-$repo/target/plugins/strict-greeting-c.wasm}"
toolchains="${GALE_TOOLCHAINS:-$repo/target/toolchains}"
build="$repo/target/plugin-build/strict-greeting-c"

# The contract this plugin is built against. gale loads plugins built
# against any earlier 0.1.x of its own contract, so building against the
# first one keeps this component loadable by every 0.1 host.
contract="${GALE_PLUGIN_CONTRACT:-0.1.0}"

"$here/toolchain.sh"

# The WIT package of that version: wit/ itself, or a copy of an earlier
# version kept under wit/ (wit/previous/<version>/) once wit/ moved on.
wit_root="$repo/wit"
wit_dir=""
for d in "$wit_root" "$wit_root/previous/$contract" "$wit_root"/*/"$contract" "$wit_root"/*/*"$contract"; do
    if [ -f "$d/worlds.wit" ] && grep -q "^package gale:plugin@$contract;" "$d/worlds.wit"; then
        wit_dir="$d"
        break
    fi
done
if [ -z "$wit_dir" ]; then
    echo "build: no WIT package gale:plugin@$contract under $wit_root" >&2
    exit 1
fi

if [ -f "$out" ] && grep -qaF "gale:plugin/evaluator@$contract#evaluate" "$out" \
    && [ -z "$(find "$here/plugin.c" "$here/build.sh" "$here/toolchain.sh" "$wit_root" \
        \( -name '*.wit' -o -path "$here/*" \) -newer "$out" -print -quit)" ]; then
    echo "build: $out is up to date" >&2
    exit 0
fi

started=$(date +%s%N)
wit_bindgen="$toolchains/cargo/bin/wit-bindgen"
linker="$(rustc --print sysroot)/lib/rustlib/x86_64-unknown-linux-gnu/bin/wasm-component-ld"
if [ ! -x "$linker" ]; then
    echo "build: $linker not found (it ships with Rust 1.82 and later)" >&2
    exit 1
fi

rm -rf "$build"
mkdir -p "$build/bindings" "$(dirname "$out")"
if ! "$wit_bindgen" c "$wit_dir" --world health --out-dir "$build/bindings" >"$build/wit-bindgen.log" 2>&1; then
    cat "$build/wit-bindgen.log" >&2
    exit 1
fi

cflags=(--target=wasm32-wasi -O2 -Wall -Wextra -Werror)
clang "${cflags[@]}" -I"$build/bindings" -c "$here/plugin.c" -o "$build/plugin.o"
clang "${cflags[@]}" -c "$build/bindings/health.c" -o "$build/health.o"

# Reactor: no main; exports are called after `_initialize`. The plugin
# touches no WASI (gale grants plugins almost none), so no preview1 adapter
# is linked in: a libc call that needs WASI fails here, not at run time.
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
clang --target=wasm32-wasi -O2 -mexec-model=reactor \
    -fuse-ld="$linker" \
    -Wl,--wasm-ld-path="$(command -v wasm-ld-14 || command -v wasm-ld)" \
    -Wl,--wasi-adapter=none \
    -Wl,--strip-all \
    -o "$tmp" \
    "$build/plugin.o" "$build/health.o" "$build/bindings/health_component_type.o"
mv -f "$tmp" "$out"

elapsed_ms=$(( ($(date +%s%N) - started) / 1000000 ))
echo "build: $out ($(stat -c %s "$out") bytes, contract gale:plugin@$contract, ${elapsed_ms} ms)" >&2
