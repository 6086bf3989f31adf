# Shared setup of the benchmark scripts: the release artifacts and a subprocess config in a temp
# folder that is removed on exit. Sourced, not run.
set -euo pipefail

BENCHES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$BENCHES_DIR/../target}"
HOST="$TARGET_DIR/release/tower-host"
PLUGIN="$TARGET_DIR/release/libtower_plugin_subprocess.so"
for artifact in "$HOST" "$PLUGIN"; do
    if [[ ! -x "$artifact" && ! -f "$artifact" ]]; then
        echo "$artifact is missing: run \`cargo build --release -p tower-host -p tower-plugin-subprocess\` first (with the same CARGO_TARGET_DIR)" >&2
        exit 1
    fi
done

SCRATCH="$(mktemp -d -t tower-bench-XXXXXX)"
trap 'rm -rf "$SCRATCH"' EXIT
CONFIG="$SCRATCH/host.toml"
cat > "$CONFIG" <<TOML
[backend]
path = "$PLUGIN"

[backend.settings]
work_dir = "$SCRATCH/work"
TOML

# Prints the machine the numbers come from.
print_machine() {
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), nproc $(nproc)"
    echo "memory: $(free -h | awk '/^Mem:/ {print $2}'), kernel $(uname -r)"
    echo "commit: $(git -C "$BENCHES_DIR" rev-parse --short HEAD 2>/dev/null || echo unknown)"
}
