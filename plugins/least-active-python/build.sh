#!/usr/bin/env bash
# Usage: build.sh [OUT.wasm]
# Builds the plugin into OUT (default <repo>/target/plugins/least-active-python.wasm),
# skipped when it is up to date (see ../python-component.sh).
#
# Against contract 0.1.0, which has every function this plugin uses: a
# 0.1.0 component loads in 0.1.0 hosts, and later 0.1.x hosts are meant to
# load it too (rule 1 in wit/types.wit), while one built against 0.1.1 does
# not load in a 0.1.0 host. Once wit/ has moved on, 0.1.0 lives, frozen, in
# wit/previous/0.1.0/.
exec "$(dirname "${BASH_SOURCE[0]}")/../python-component.sh" least-active-python 0.1.0 balancer "$@"
