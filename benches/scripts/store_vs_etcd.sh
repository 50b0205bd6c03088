#!/usr/bin/env bash
# State-store benchmark: Berth's embedded store, etcd from apt (Debian's etcd-server) and the
# physical limit (a bare loop of 256-byte writes, each followed by fdatasync, on a preallocated
# file), in one go, on the same filesystem, through the same binary (store_perf).
#
#   benches/scripts/store_vs_etcd.sh [ROUNDS]      (default ROUNDS=5)
#
# The backends alternate within each round and each ratio is taken per round (same minute, same
# disk weather), then the median over rounds is reported: fdatasync latency on a shared VM disk
# swings 3-4x within minutes. DROP_CACHES=1 also drops the page cache between runs.
#
# Needs etcd and STORE_PERF (default target/release/examples/store_perf, from
# `cargo build --release -p berth-store --example store_perf`). Data goes under $BENCH_DIR
# (default /var/tmp, a disk-backed filesystem; not tmpfs).
#
# Goals (issue 11): 1 client >= 0.9x the fdatasync loop; 16 clients >= 3x etcd;
# watch delivery to 1,000 watchers of one prefix with p99 < 10 ms.
set -euo pipefail

ROUNDS=${1:-5}
OPS1=${OPS1:-500}        # puts with 1 client
OPS16=${OPS16:-8000}     # puts with 16 clients
WATCH_OPS=${WATCH_OPS:-200}
STORE_PERF=${STORE_PERF:-target/release/examples/store_perf}
BENCH_DIR=${BENCH_DIR:-/var/tmp}
[ -x "$STORE_PERF" ] || { echo "no store_perf at $STORE_PERF" >&2; exit 1; }
command -v etcd >/dev/null || { echo "needs etcd (apt install etcd-server)" >&2; exit 1; }

WORK=$(mktemp -d "$BENCH_DIR/berth-store-bench.XXXXXX")
ETCD_PID=
stop_etcd() {
    if [ -n "$ETCD_PID" ]; then kill "$ETCD_PID" 2>/dev/null; wait "$ETCD_PID" 2>/dev/null || true; fi
    ETCD_PID=
}
cleanup() { stop_etcd; rm -rf "$WORK"; }
trap cleanup EXIT

port_free() { ! ss -Hltn "sport = :$1" | grep -q .; }
pick_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 40000))
        if port_free "$p" && [ "$p" != "${1:-}" ]; then echo "$p"; return; fi
    done
}
# A fresh etcd (empty data dir on the same filesystem) for each run, as for the embedded store.
start_etcd() {
    local data=$WORK/etcd-$RANDOM
    ETCD_CLIENT=$(pick_port)
    local peer; peer=$(pick_port "$ETCD_CLIENT")
    etcd --name bench --data-dir "$data" \
        --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT" --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT" \
        --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "bench=http://127.0.0.1:$peer" >"$WORK/etcd.log" 2>&1 &
    ETCD_PID=$!
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$ETCD_CLIENT") 2>/dev/null && { sleep 0.5; return; }
        sleep 0.1
    done
    echo "etcd did not start" >&2; cat "$WORK/etcd.log" >&2; exit 1
}
settle() {
    sync
    if [ "${DROP_CACHES:-0}" = 1 ]; then echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; fi
    sleep 0.5
}
median() { sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

run() { # label, store_perf args...
    local label=$1; shift
    settle
    local out; out=$("$STORE_PERF" "$@")
    echo "  $label: $(echo "$out" | head -n -1)" >&2
    if [ "${KEEP_LINE:-0}" = 1 ]; then echo "$out" | head -n -1 | sed 's/.*latency_us //'; else echo "$out" | tail -1; fi
}
embedded() { local d=$WORK/embedded-$RANDOM; run "$@" --backend embedded --dir "$d"; rm -rf "$d"; }
etcd_run() { start_etcd; run "$@" --backend "etcd://127.0.0.1:$ETCD_CLIENT"; stop_etcd; }

declare -A R
for round in $(seq "$ROUNDS"); do
    echo "round $round/$ROUNDS" >&2
    R[sync]+="$(run fdatasync --backend fdatasync --dir "$WORK" --ops "$OPS1" --value-bytes 256) "
    R[emb1]+="$(embedded "embedded 1 client" --clients 1 --ops "$OPS1" --value-bytes 256) "
    R[inter]+="$(embedded "embedded 1 client interleaved with the fdatasync loop" --clients 1 --ops "$OPS1" --value-bytes 256 --interleave-fdatasync 20) "
    R[interold]+="$(embedded "embedded 1 client, no leader (every sync on the log thread), interleaved" --clients 1 --ops "$OPS1" --value-bytes 256 --interleave-fdatasync 20 --no-leader) "
    R[etcd1]+="$(etcd_run "etcd 1 client" --clients 1 --ops "$OPS1" --value-bytes 256) "
    R[emb16]+="$(embedded "embedded 16 clients" --clients 16 --ops "$OPS16" --value-bytes 256) "
    R[emb16old]+="$(embedded "embedded 16 clients, no leader" --clients 16 --ops "$OPS16" --value-bytes 256 --no-leader) "
    R[etcd16]+="$(etcd_run "etcd 16 clients" --clients 16 --ops "$OPS16" --value-bytes 256) "
done
echo "watch: 1,000 watchers of one prefix" >&2
WATCH_EMB=$(KEEP_LINE=1 embedded "embedded watch" --clients 1 --ops "$WATCH_OPS" --value-bytes 256 --watchers 1000)
WATCH_ETCD=$(KEEP_LINE=1 etcd_run "etcd watch" --clients 1 --ops "$WATCH_OPS" --value-bytes 256 --watchers 1000)

med() { echo "${R[$1]}" | tr ' ' '\n' | grep . | median; }
# Per-round ratios, then their median.
ratios() { # numerator-key denominator-key
    paste <(echo "${R[$1]}" | tr ' ' '\n' | grep .) <(echo "${R[$2]}" | tr ' ' '\n' | grep .) |
        awk '{ printf "%.2f\n", $1 / $2 }' | median
}
SYNC=$(med sync); EMB1=$(med emb1); ETCD1=$(med etcd1); EMB16=$(med emb16); ETCD16=$(med etcd16)
cat <<EOF

durable puts/s, 256-byte values, $ROUNDS rounds ($(uname -r), $(nproc) CPUs, $(df -T "$WORK" | awk 'NR==2 { print $2 }') on $(df "$WORK" | awk 'NR==2 { print $1 }'), load $(cut -d' ' -f1-3 /proc/loadavg))
  per round:  fdatasync [${R[sync]}]  emb1 [${R[emb1]}]  etcd1 [${R[etcd1]}]  emb16 [${R[emb16]}]  etcd16 [${R[etcd16]}]
              interleaved ratios [${R[inter]}]  without leaders [${R[interold]}]  emb16 without leaders [${R[emb16old]}]
  median:     fdatasync loop $SYNC | embedded 1 client $EMB1 | etcd 1 client $ETCD1 | embedded 16 clients $EMB16 | etcd 16 clients $ETCD16
  embedded 1 client / fdatasync loop:  $(med inter)x interleaved in chunks of 20 puts (median over rounds; goal >= 0.9)
                                       $(med interold)x the same without leaders (--no-leader: every sync on the log thread)
                                       $(ratios emb1 sync)x from separate runs (median of per-round ratios)
  embedded 1 client / etcd 1 client:   $(ratios emb1 etcd1)x
  embedded 16 / etcd 16 clients:       $(ratios emb16 etcd16)x   (goal >= 3)
  embedded 16 clients without leaders: $(med emb16old) puts/s, $(ratios emb16old etcd16)x etcd
watch delivery to 1,000 watchers (us; the goal is p99 after the acknowledgement < 10000)
  embedded $WATCH_EMB
  etcd     $WATCH_ETCD
EOF
