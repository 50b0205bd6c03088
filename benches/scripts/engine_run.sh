#!/usr/bin/env bash
# `berth run` of an already-unpacked busybox image: the time from the command to the container's
# process running (it writes to a FIFO the script waits on), and the whole `run --rm true` round
# trip (create + start + wait + teardown), with runc and crun running the same rootfs as an OCI
# bundle in the same run for reference. Needs root, hyperfine, busybox-static, runc, crun.
#
#   cargo build --release -p berth-examples --bin berth --bin berth-runtime
#   sudo benches/scripts/engine_run.sh [path/to/berth] [runs]
set -euo pipefail
source "$(dirname "$0")/hugetlb.sh"

BERTH=$(realpath "${1:-target/release/berth}")
RUNS=${2:-30}
WORK=$(mktemp -d /tmp/berth-bench-run.XXXXXX)
ROOT=$WORK/root
trap 'for c in $("$BERTH" --root "$ROOT" ps -aq 2>/dev/null); do "$BERTH" --root "$ROOT" rm -f "$c" >/dev/null; done;
      umount -R "$WORK"/* >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT

"$BERTH" --root "$ROOT" image import --busybox /bin/busybox busybox >/dev/null
"$BERTH" --root "$ROOT" run --rm busybox true   # unpack once: later runs reuse the snapshots

echo "== command -> process running (median of $RUNS)"
mkdir -p "$WORK/shared"
mkfifo "$WORK/shared/fifo"
samples=()
for _ in $(seq "$RUNS"); do
    start=$(date +%s%N)
    "$BERTH" --root "$ROOT" run --rm -v "$WORK/shared:/w" busybox sh -c 'echo up > /w/fifo' &
    read -r _ < "$WORK/shared/fifo"
    end=$(date +%s%N)
    wait
    samples+=($(( (end - start) / 1000 )))
done
printf '%s\n' "${samples[@]}" | sort -n | awk '{a[NR]=$1} END {printf "berth run: median %.1f ms, min %.1f ms, max %.1f ms\n", a[int((NR+1)/2)]/1000, a[1]/1000, a[NR]/1000}'

echo "== whole round trip: run --rm true"
BUNDLE=$WORK/bundle
mkdir -p "$BUNDLE/rootfs/bin"
cp /bin/busybox "$BUNDLE/rootfs/bin/"
for a in sh true; do ln -s busybox "$BUNDLE/rootfs/bin/$a"; done
(cd "$BUNDLE" && runc spec && sed -i 's/"terminal": true/"terminal": false/; s/"sh"/"true"/' config.json)
# crun refuses to run while cgroup2 lists a controller: give it hugetlb as v1 (TRAPS.md).
borrow_hugetlb
hyperfine -N --warmup 3 --runs "$RUNS" --export-markdown "$WORK/run.md" \
    -n "berth run --rm" "$BERTH --root $ROOT run --rm busybox true" \
    -n "runc run" "runc --root $WORK/runc run -b $BUNDLE bench-runc" \
    -n "crun run" "crun --root $WORK/crun run -b $BUNDLE bench-crun" || true
return_hugetlb
cat "$WORK/run.md"
