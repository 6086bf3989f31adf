#!/usr/bin/env bash
# No pipefail: `yes` ends by SIGPIPE when `head` has its lines, which is the normal end here.
set -eu
# `yes` writes in large blocks, so the app itself is far faster than any consumer.
yes "$(printf 'x%.0s' $(seq 106))" | head -n "${LINES:-10000000}"
