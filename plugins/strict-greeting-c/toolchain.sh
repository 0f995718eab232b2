#!/usr/bin/env bash
# Install what build.sh needs, once: clang/lld/wasi-libc from Debian and
# wit-bindgen-cli (pinned) from crates.io. Safe to run again: each step is
# skipped when already done, with one progress line either way.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
toolchains="${GALE_TOOLCHAINS:-$repo/target/toolchains}"

# Pinned: the C output of this version builds with Debian 12's clang 14 and
# its component-type object is accepted by the Rust toolchain's
# wasm-component-ld.
WIT_BINDGEN_VERSION=0.63.0

apt_pkgs=(clang lld wasi-libc libclang-rt-dev-wasm32)
missing=()
for p in "${apt_pkgs[@]}"; do
    if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]; then
        missing+=("$p")
    fi
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "toolchain: apt packages present (${apt_pkgs[*]})" >&2
else
    echo "toolchain: apt-get installing ${missing[*]}" >&2
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

wbg="$toolchains/cargo/bin/wit-bindgen"
if [ -x "$wbg" ] && "$wbg" --version 2>/dev/null | grep -q "^wit-bindgen-cli $WIT_BINDGEN_VERSION\b"; then
    echo "toolchain: wit-bindgen-cli $WIT_BINDGEN_VERSION present ($wbg)" >&2
else
    echo "toolchain: cargo installing wit-bindgen-cli $WIT_BINDGEN_VERSION (C generator only) into $toolchains/cargo" >&2
    cargo install --quiet --locked --version "$WIT_BINDGEN_VERSION" \
        --no-default-features --features c \
        wit-bindgen-cli --root "$toolchains/cargo"
fi
