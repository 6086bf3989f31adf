#!/usr/bin/env bash
# Start overhead: `tower-host run` of a bash app that does nothing, against `bash` running the
# same script, with hyperfine (`apt-get install -y hyperfine`). Then one run with debug logs,
# whose timestamps show where the extra time goes. Takes about 30 s.
source "$(dirname "$0")/common.sh"
command -v hyperfine > /dev/null || { echo "hyperfine is missing: apt-get install -y hyperfine" >&2; exit 1; }

APP="$BENCHES_DIR/apps/noop"
print_machine
hyperfine --warmup 5 --runs "${RUNS:-50}" --shell=none --export-markdown "$SCRATCH/start.md" \
    --command-name "bash run.sh" "bash $APP/run.sh" \
    --command-name "tower-host run" "$HOST --config $CONFIG run $APP"
cat "$SCRATCH/start.md"

echo
echo "One run with RUST_LOG=debug (timestamps are the host's):"
started="$(date -u +%H:%M:%S.%6N)"
RUST_LOG=debug "$HOST" --config "$CONFIG" run "$APP" 2>&1 | sed 's/\x1b\[[0-9;]*m//g'
echo "process spawned by this script at $started"
