#!/usr/bin/env bash
# Installs the Python component toolchain (componentize-py, pinned) into a
# venv at $GALE_TOOLCHAINS/python. Idempotent: does nothing when the pinned
# version is already there. Needs python3 with the venv module and PyPI.
set -euo pipefail

# Pinned: componentize-py embeds its own CPython and wasi-libc, so a new
# version changes the component (and its size, memory and CPU needs).
COMPONENTIZE_PY_VERSION=0.25.1

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${GALE_TOOLCHAINS:-$repo/target/toolchains}/python"
tool="$venv/bin/componentize-py"

# `componentize-py --version` prints "componentize-py 0.25.1".
if [ -x "$tool" ] && [ "$("$tool" --version 2>/dev/null)" = "componentize-py $COMPONENTIZE_PY_VERSION" ]; then
    echo "toolchain: componentize-py $COMPONENTIZE_PY_VERSION already in $venv" >&2
    exit 0
fi

echo "toolchain: installing componentize-py $COMPONENTIZE_PY_VERSION into $venv" >&2
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check \
    "componentize-py==$COMPONENTIZE_PY_VERSION"
