#!/usr/bin/env bash
# Build {{name}}.wasm with componentize-py (pip install componentize-py==0.25.1,
# or set COMPONENTIZE_PY to its path).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tool="${COMPONENTIZE_PY:-componentize-py}"
# --stub-wasi: the plugin needs no WASI; gale grants only clocks, random
# and cli anyway.
"$tool" -d "$here/wit" -w balancer componentize --stub-wasi -p "$here" app -o "$here/{{name}}.wasm"
echo "built $here/{{name}}.wasm"
