#!/usr/bin/env bash
# The toolchain of gale's Python plugins: one pinned componentize-py for
# all of them (see ../least-active-python/toolchain.sh).
exec "$(dirname "${BASH_SOURCE[0]}")/../least-active-python/toolchain.sh" "$@"
