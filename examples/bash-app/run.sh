#!/usr/bin/env bash
set -euo pipefail

echo "Hello from a bash app"
echo "NAME=${NAME:-<not set>}"
