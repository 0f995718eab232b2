#!/usr/bin/env bash
# The fault-injection soak at full length: SECONDS of faults (300 by
# default) against the real gale binary, with smtp-sink, nginx and BIND
# as its peers (see tests/soak.rs for the schedule and what is counted).
# Prints the report and leaves it in target/artifacts/soak.md.
#   bench/soak.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
GALE_SOAK_SECS="${1:-300}" GALE_SOAK_STEP_MS="${GALE_SOAK_STEP_MS:-2000}" \
    cargo test --release --test soak -- --nocapture
cat target/artifacts/soak.md
