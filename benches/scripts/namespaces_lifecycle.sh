#!/usr/bin/env bash
# Container lifecycle latency and peak memory: create+start+wait+delete of a busybox `true`
# bundle (the bundle `runc spec` writes, terminal off), sequentially, berth-runtime vs runc vs
# crun on the SAME bundle in one run. Each runtime's `run` does exactly create, start, wait
# and delete in one invocation.
#
# Run (as root):
#   cargo build --release -p berth-examples --bin berth-runtime
#   benches/scripts/namespaces_lifecycle.sh [RUNS]          # default 100 runs per runtime
#
# Needs: hyperfine, runc, crun, busybox-static (/bin/busybox), GNU time (/usr/bin/time).
# crun 1.8.1 refuses this host's hybrid cgroup layout while cgroup2 lists hugetlb: the script
# mounts hugetlb as a v1 hierarchy for the run and unmounts it afterwards.
set -euo pipefail

RUNS=${1:-100}
HERE=$(cd "$(dirname "$0")/../.." && pwd)
BERTH=${BERTH_RUNTIME:-$HERE/target/release/berth-runtime}
[ -x "$BERTH" ] || BERTH=$HERE/target-namespaces/release/berth-runtime
for tool in hyperfine runc crun /usr/bin/time /bin/busybox; do
    command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
[ -x "$BERTH" ] || { echo "build berth-runtime first (cargo build --release -p berth-examples --bin berth-runtime)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/berth-bench-ns.XXXXXX)
MOUNTED_HUGETLB=0
cleanup() {
    "$BERTH" --root "$WORK/state-berth" delete --force bench-berth >/dev/null 2>&1 || true
    runc --root "$WORK/state-runc" delete --force bench-runc >/dev/null 2>&1 || true
    crun --root "$WORK/state-crun" delete --force bench-crun >/dev/null 2>&1 || true
    if [ "$MOUNTED_HUGETLB" = 1 ]; then
        umount /sys/fs/cgroup/hugetlb && rmdir /sys/fs/cgroup/hugetlb 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

if ! mountpoint -q /sys/fs/cgroup/hugetlb 2>/dev/null && grep -qw hugetlb /sys/fs/cgroup/unified/cgroup.controllers 2>/dev/null; then
    mkdir -p /sys/fs/cgroup/hugetlb
    mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb
    MOUNTED_HUGETLB=1
fi

# The bundle: busybox-static with its applets, the config `runc spec` writes, running `true`.
mkdir -p "$WORK/bundle/rootfs/bin"
cp /bin/busybox "$WORK/bundle/rootfs/bin/"
for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$WORK/bundle/rootfs/bin/$applet"
done
(cd "$WORK/bundle" && runc spec)
sed -i -e 's/"terminal": true/"terminal": false/' -e 's/"sh"$/"true"/' "$WORK/bundle/config.json"
grep -q '"true"' "$WORK/bundle/config.json"

B="$BERTH --root $WORK/state-berth run --bundle $WORK/bundle bench-berth"
R="runc --root $WORK/state-runc run --bundle $WORK/bundle bench-runc"
C="crun --root $WORK/state-crun run --bundle $WORK/bundle bench-crun"

echo "== latency ($RUNS sequential create+start+wait+delete each) =="
hyperfine --warmup 5 --runs "$RUNS" -N \
    --export-markdown "$WORK/latency.md" \
    -n berth-runtime "$B" -n crun "$C" -n runc "$R"
cat "$WORK/latency.md"

echo "== peak memory (max RSS of the runtime and its children, median of 20) =="
for name in berth-runtime crun runc; do
    case $name in berth-runtime) cmd=$B ;; crun) cmd=$C ;; runc) cmd=$R ;; esac
    for _ in $(seq 20); do
        /usr/bin/time -f "%M" $cmd 2>&1 >/dev/null | tail -1
    done | sort -n | awk -v n="$name" '{a[NR]=$1} END {printf "%-14s max RSS median %d KiB (min %d, max %d)\n", n, a[int((NR+1)/2)], a[1], a[NR]}'
done
