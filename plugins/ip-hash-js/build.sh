#!/usr/bin/env bash
# Build the ip-hash-js balancer component.
#
#   plugins/ip-hash-js/build.sh [OUT.wasm]
#
# OUT defaults to <repo>/target/plugins/ip-hash-js.wasm. Skipped when OUT is
# newer than every source file here and every WIT file of the repo.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

out="${1:-$repo/target/plugins/ip-hash-js.wasm}"
case "$out" in
    /*) ;;
    *) out="$PWD/$out" ;;
esac

"$here/toolchain.sh"

if [[ -f $out ]]; then
    newer="$(find "$here/plugin.js" "$here/build.mjs" "$here/build.sh" \
        "$here/package.json" "$here/package-lock.json" "$repo/wit" \
        -type f -newer "$out" -print -quit)"
    if [[ -z $newer ]]; then
        echo "ip-hash-js: $out is up to date" >&2
        exit 0
    fi
fi

mkdir -p "$(dirname "$out")"
node "$here/build.mjs" "$out"
