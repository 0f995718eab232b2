#!/usr/bin/env bash
# Usage: build.sh [OUT.wasm]
# Builds the plugin into OUT (default <repo>/target/plugins/admission-python.wasm),
# skipped when it is up to date (see ../python-component.sh).
#
# Against contract 0.1.3, the first with the admission world; later 0.1.x
# hosts load it too (rule 1 in wit/types.wit). Once wit/ has moved on,
# 0.1.3 lives, frozen, in wit/previous/0.1.3/.
exec "$(dirname "${BASH_SOURCE[0]}")/../python-component.sh" admission-python 0.1.3 admission "$@"
