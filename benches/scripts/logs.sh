#!/usr/bin/env bash
# Log throughput: an app that writes LINES lines of 107 bytes (default 10 million, 1.07 GB),
# read by `cat > /dev/null` through a pipe (the baseline), then delivered through
# `tower-host run` in text and in JSON to /dev/null. Reports the elapsed time, the throughput
# and the maximum RSS from /usr/bin/time. Takes about a minute with the default.
source "$(dirname "$0")/common.sh"
export LINES="${LINES:-10000000}"
APP="$BENCHES_DIR/apps/log-flood"
BYTES=$((LINES * 107))
[[ -x /usr/bin/time ]] || { echo "/usr/bin/time is missing: apt-get install -y time" >&2; exit 1; }

# Runs a shell command under /usr/bin/time and prints one table row.
measure() {
    local name="$1" command="$2"
    /usr/bin/time -f '%e %M' -o "$SCRATCH/time" bash -c "$command"
    read -r seconds max_rss_kib < "$SCRATCH/time"
    awk -v name="$name" -v s="$seconds" -v rss="$max_rss_kib" -v bytes="$BYTES" -v lines="$LINES" \
        'BEGIN { printf "| %s | %.2f s | %.0f MB/s | %.2f M lines/s | %.1f MiB |\n", name, s, bytes / s / 1e6, lines / s / 1e6, rss / 1024 }'
}

print_machine
echo "$LINES lines, $BYTES bytes"
echo
echo "| Consumer | Elapsed | Throughput | Lines | Max RSS of the measured command |"
echo "|---|---|---|---|---|"
measure "bash run.sh \| cat > /dev/null" "bash $APP/run.sh | cat > /dev/null"
measure "tower-host run > /dev/null" "$HOST --config $CONFIG run --param LINES=$LINES $APP > /dev/null"
measure "tower-host run --output json > /dev/null" "$HOST --config $CONFIG run --output json --param LINES=$LINES $APP > /dev/null"
