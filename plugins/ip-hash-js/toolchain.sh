#!/usr/bin/env bash
# Install the pinned JavaScript toolchain (componentize-js and what it
# pulls in, see package-lock.json) into node_modules/ next to this script.
# Idempotent: runs `npm ci` only when node_modules is missing or older than
# package-lock.json. Needs node >= 20 and npm; the registry, once.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

# npm ci writes node_modules/.package-lock.json last: its age is the install's.
stamp=node_modules/.package-lock.json
if [[ -f $stamp && $stamp -nt package-lock.json ]]; then
    exit 0
fi
echo "ip-hash-js: npm ci (node_modules missing or older than package-lock.json)" >&2
npm ci --no-audit --no-fund --loglevel=error >/dev/null
touch "$stamp"
