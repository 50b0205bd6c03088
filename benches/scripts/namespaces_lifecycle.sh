#!/usr/bin/env bash
# Container lifecycle latency and peak memory: create+start+wait+delete of a busybox `true`
# bundle (the bundle `runc spec` writes, terminal off), sequentially, berth-runtime vs runc vs
# crun on the SAME bundle in one run. Each runtime's `run` does exactly create, start, wait
# and delete in one invocation.
#
# A second scenario drives the separate verbs the way containerd's shims, CRI-O and Podman do
# (create, start, state, kill, delete of a `sleep` container), berth-runtime and crun
# interleaved iteration by iteration, and prints the median of each verb, of their sum and of
# the single-call `run`, with berth/crun ratios.
#
# Run (as root):
#   cargo build --release -p berth-examples --bins
#   benches/scripts/namespaces_lifecycle.sh [RUNS] [VERB_RUNS]
#       RUNS: hyperfine runs per runtime of `run` (default 100; 0 skips that part)
#       VERB_RUNS: interleaved iterations of the verb scenario (default 25)
#
# Needs: hyperfine, runc, crun, busybox-static (/bin/busybox), GNU time (/usr/bin/time).
# crun 1.8.1 refuses this host's hybrid cgroup layout while cgroup2 lists hugetlb: the script
# mounts hugetlb as a v1 hierarchy for the run and unmounts it afterwards.
set -euo pipefail
source "$(dirname "$0")/hugetlb.sh"

RUNS=${1:-100}
VERB_RUNS=${2:-25}
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
    "$BERTH" --root "$WORK/state-berth" delete --force verbs-berth >/dev/null 2>&1 || true
    crun --root "$WORK/state-crun" delete --force verbs-crun >/dev/null 2>&1 || true
    return_hugetlb || true
    rm -rf "$WORK"
}
trap cleanup EXIT

borrow_hugetlb

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

# The verb scenario's bundle: the same rootfs, running `sleep 3600` (kill has something to
# signal, as for a shim's long-running container).
mkdir -p "$WORK/bundle-sleep"
ln -s ../bundle/rootfs "$WORK/bundle-sleep/rootfs"
sed -e 's/"true"$/"sleep", "3600"/' "$WORK/bundle/config.json" >"$WORK/bundle-sleep/config.json"
grep -q '"3600"' "$WORK/bundle-sleep/config.json"

# Microseconds from bash's clock: no fork per timestamp.
us() { local t=${EPOCHREALTIME/./}; echo "$((10#$t))"; }

# One iteration of the verb scenario for runtime $1 (berth-runtime|crun): appends each verb's
# time in microseconds to $WORK/verbs/<runtime>.<verb>.
verbs_once() {
    local name=$1 bin root id t0 t1
    case $name in
        berth-runtime) bin=$BERTH root=$WORK/state-berth id=verbs-berth ;;
        crun) bin=crun root=$WORK/state-crun id=verbs-crun ;;
    esac
    t0=$(us); $bin --root "$root" run --bundle "$WORK/bundle" "run-$id" </dev/null >/dev/null 2>&1 \
        || { echo "$name run failed" >&2; exit 1; }
    t1=$(us); echo $((t1 - t0)) >>"$WORK/verbs/$name.run"
    t0=$(us); $bin --root "$root" create --bundle "$WORK/bundle-sleep" "$id" </dev/null >/dev/null 2>&1 \
        || { echo "$name create failed" >&2; exit 1; }
    t1=$(us); echo $((t1 - t0)) >>"$WORK/verbs/$name.create"
    t0=$(us); $bin --root "$root" start "$id" || { echo "$name start failed" >&2; exit 1; }
    t1=$(us); echo $((t1 - t0)) >>"$WORK/verbs/$name.start"
    t0=$(us); $bin --root "$root" state "$id" >/dev/null || { echo "$name state failed" >&2; exit 1; }
    t1=$(us); echo $((t1 - t0)) >>"$WORK/verbs/$name.state"
    t0=$(us); $bin --root "$root" kill "$id" KILL || { echo "$name kill failed" >&2; exit 1; }
    t1=$(us); echo $((t1 - t0)) >>"$WORK/verbs/$name.kill"
    # A shim deletes once it has seen the exit: wait for it, untimed.
    while $bin --root "$root" state "$id" 2>/dev/null | grep -q '"running"'; do sleep 0.002; done
    t0=$(us); $bin --root "$root" delete "$id" || { echo "$name delete failed" >&2; exit 1; }
    t1=$(us); echo $((t1 - t0)) >>"$WORK/verbs/$name.delete"
}

median() { sort -n "$1" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

if [ "$VERB_RUNS" -gt 0 ]; then
    echo "== separate verbs ($VERB_RUNS interleaved iterations; medians in ms) =="
    mkdir -p "$WORK/verbs"
    for _ in 1 2 3; do verbs_once berth-runtime; verbs_once crun; done # warm-up
    rm -f "$WORK"/verbs/*
    for i in $(seq "$VERB_RUNS"); do
        # Alternate who goes first, so neither always follows the other's cleanup.
        if [ $((i % 2)) = 0 ]; then verbs_once berth-runtime; verbs_once crun
        else verbs_once crun; verbs_once berth-runtime; fi
    done
    for name in berth-runtime crun; do
        paste -d+ "$WORK/verbs/$name".{create,start,state,kill,delete} | bc >"$WORK/verbs/$name.sum"
    done
    printf "%-8s %14s %8s %7s\n" verb berth-runtime crun ratio
    for verb in run create start state kill delete sum; do
        b=$(median "$WORK/verbs/berth-runtime.$verb")
        c=$(median "$WORK/verbs/crun.$verb")
        awk -v v="$verb" -v b="$b" -v c="$c" \
            'BEGIN {printf "%-8s %14.2f %8.2f %7.2f\n", v, b / 1000, c / 1000, b / c}'
    done
fi

[ "$RUNS" -gt 0 ] || exit 0

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
