#!/usr/bin/env bash
# Registry benchmark: Berth's registry side by side with docker-registry 2.8 (Debian's
# distribution), same machine, same script, fresh storage for every run.
#
#   benches/scripts/registry_vs_distribution.sh [RUNS]      (default RUNS=5)
#
# Needs skopeo, docker-registry, curl, jq, and Berth's server: either the `berth` binary
# (BERTH=target/release/berth, from `cargo build --release -p berth-examples --bin berth`) or the
# bare server example (REGISTRY_SERVE=target/release/examples/registry_serve, the default, from
# `cargo build --release -p berth-registry --example registry_serve`). Run as root to drop caches.
#
# Measures, per server:
#   1. skopeo push + pull of a 200 MB, 4-layer OCI image: wall time of each copy (median of RUNS)
#      and the server's own CPU time (user+sys from /proc/<pid>/stat) for one push + one pull;
#   2. a 1 GiB blob pushed in one PUT (curl): server CPU time and peak RSS (VmHWM);
#   3. 16 clients pulling all four layers at once (curl): wall time and aggregate throughput.
set -euo pipefail

RUNS=${1:-5}
LAYER_MB=${LAYER_MB:-50}   # 4 layers of this size (200 MB by default)
BIG_MB=${BIG_MB:-1024}     # the single large blob
if [ -n "${BERTH:-}" ]; then
    [ -x "$BERTH" ] || { echo "no berth binary at $BERTH" >&2; exit 1; }
    berth_serve() { exec "$BERTH" registry serve --addr "$1" --storage "$2" --gc-interval 0; }
else
    REGISTRY_SERVE=${REGISTRY_SERVE:-target/release/examples/registry_serve}
    [ -x "$REGISTRY_SERVE" ] || { echo "no server at $REGISTRY_SERVE (set REGISTRY_SERVE or BERTH)" >&2; exit 1; }
    berth_serve() { exec "$REGISTRY_SERVE" "$1" "$2"; }
fi
for tool in skopeo docker-registry curl jq; do
    command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/berth-registry-bench.XXXXXX)
SERVER_PID=
cleanup() {
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
TICKS=$(getconf CLK_TCK)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
cpu_seconds() { # user+sys of a process, in seconds
    awk -v t="$TICKS" '{ printf "%.3f", ($14 + $15) / t }' "/proc/$1/stat"
}
peak_rss_mb() { awk '/VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
median() { sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# --- The test image: 4 layers of incompressible data, gzip-wrapped (level 1). ---------------
LAYOUT=$WORK/layout
mkdir -p "$LAYOUT/blobs/sha256"
add_blob() { # file -> prints digest hex, moves file into the layout
    local hex; hex=$(sha256sum "$1" | cut -d' ' -f1)
    mv "$1" "$LAYOUT/blobs/sha256/$hex"; echo "$hex"
}
LAYERS=()
for i in 0 1 2 3; do
    mkdir -p "$WORK/l$i"
    head -c "${LAYER_MB}M" /dev/urandom > "$WORK/l$i/data"
    tar -C "$WORK/l$i" -cf - data | gzip -1 > "$WORK/layer$i"
    rm -rf "$WORK/l$i"
    LAYERS+=("$(add_blob "$WORK/layer$i")")
done
echo '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}' > "$WORK/config"
CONFIG=$(add_blob "$WORK/config")
size() { stat -c %s "$LAYOUT/blobs/sha256/$1"; }
layers_json=$(for l in "${LAYERS[@]}"; do
    printf '{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}\n' "$l" "$(size "$l")"
done | jq -s -c .)
jq -n -c --arg c "sha256:$CONFIG" --argjson cs "$(size "$CONFIG")" --argjson layers "$layers_json" \
    '{schemaVersion:2, mediaType:"application/vnd.oci.image.manifest.v1+json",
      config:{mediaType:"application/vnd.oci.image.config.v1+json", digest:$c, size:$cs},
      layers:$layers}' | tr -d '\n' > "$WORK/manifest"
MANIFEST=$(add_blob "$WORK/manifest")
jq -n -c --arg d "sha256:$MANIFEST" --argjson s "$(size "$MANIFEST")" \
    '{schemaVersion:2, manifests:[{mediaType:"application/vnd.oci.image.manifest.v1+json",
      digest:$d, size:$s, annotations:{"org.opencontainers.image.ref.name":"v1"}}]}' > "$LAYOUT/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' > "$LAYOUT/oci-layout"
TOTAL_MB=$(du -sm "$LAYOUT/blobs" | cut -f1)
echo "# test image: 4 layers, ${TOTAL_MB} MB; $RUNS runs per server; $(date -u +%FT%TZ)"

# --- Servers. ------------------------------------------------------------------------------
start_server() { # kind -> sets SERVER_PID, PORT, STORE
    PORT=$(free_port)
    STORE=$(mktemp -d "$WORK/store.XXXXXX")
    case $1 in
    berth)
        (berth_serve "127.0.0.1:$PORT" "$STORE" 2>/dev/null) &
        ;;
    distribution)
        cat > "$STORE.yml" <<YAML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $STORE
http:
  addr: 127.0.0.1:$PORT
YAML
        (exec docker-registry serve "$STORE.yml" >/dev/null 2>&1) &
        ;;
    esac
    SERVER_PID=$!
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$PORT/v2/" >/dev/null && return 0
        sleep 0.05
    done
    echo "$1 did not start" >&2; exit 1
}
stop_server() {
    kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=
    rm -rf "$STORE" "$STORE.yml"
}

declare -A RESULT
for kind in berth distribution; do
    : > "$WORK/$kind.push"; : > "$WORK/$kind.pull"; : > "$WORK/$kind.cpu"
    for run in $(seq "$RUNS"); do
        sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
        start_server "$kind"
        cpu0=$(cpu_seconds "$SERVER_PID")
        t0=$(now)
        skopeo --insecure-policy copy -q --dest-tls-verify=false "oci:$LAYOUT:v1" \
            "docker://127.0.0.1:$PORT/bench/img:v1"
        t1=$(now)
        rm -rf "$WORK/pulled"
        skopeo --insecure-policy copy -q --src-tls-verify=false \
            "docker://127.0.0.1:$PORT/bench/img:v1" "oci:$WORK/pulled:v1"
        t2=$(now)
        cpu1=$(cpu_seconds "$SERVER_PID")
        echo "$t1 - $t0" | bc >> "$WORK/$kind.push"
        echo "$t2 - $t1" | bc >> "$WORK/$kind.pull"
        echo "$cpu1 - $cpu0" | bc >> "$WORK/$kind.cpu"
        stop_server
    done
    RESULT[$kind.push]=$(median < "$WORK/$kind.push")
    RESULT[$kind.pull]=$(median < "$WORK/$kind.pull")
    RESULT[$kind.cpu]=$(median < "$WORK/$kind.cpu")
done
rm -rf "$WORK/pulled"

# --- One large blob (1 GiB), one PUT: CPU and peak RSS. -------------------------------------
head -c "${BIG_MB}M" /dev/urandom > "$WORK/big"
BIG=$(sha256sum "$WORK/big" | cut -d' ' -f1)
for kind in berth distribution; do
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    start_server "$kind"
    rss0=$(peak_rss_mb "$SERVER_PID")
    cpu0=$(cpu_seconds "$SERVER_PID")
    loc=$(curl -sf -X POST -D - -o /dev/null "http://127.0.0.1:$PORT/v2/big/blobs/uploads/" \
        | awk 'tolower($1) == "location:" { print $2 }' | tr -d '\r')
    case $loc in http*) ;; *) loc="http://127.0.0.1:$PORT$loc" ;; esac
    sep='?'; case $loc in *\?*) sep='&' ;; esac
    t0=$(now)
    curl -sf -X PUT -H 'Content-Type: application/octet-stream' -T "$WORK/big" \
        "$loc${sep}digest=sha256:$BIG" -o /dev/null
    t1=$(now)
    RESULT[$kind.big_wall]=$(echo "$t1 - $t0" | bc)
    RESULT[$kind.big_cpu]=$(echo "$(cpu_seconds "$SERVER_PID") - $cpu0" | bc)
    RESULT[$kind.big_rss]=$(peak_rss_mb "$SERVER_PID")
    RESULT[$kind.idle_rss]=$rss0
    stop_server
done
rm -f "$WORK/big"

# --- 16 concurrent pulls of all layers. -------------------------------------------------------
for kind in berth distribution; do
    start_server "$kind"
    skopeo --insecure-policy copy -q --dest-tls-verify=false "oci:$LAYOUT:v1" \
        "docker://127.0.0.1:$PORT/bench/img:v1"
    cpu0=$(cpu_seconds "$SERVER_PID")
    t0=$(now)
    for c in $(seq 16); do
        (for l in "${LAYERS[@]}"; do
            curl -sf -o /dev/null "http://127.0.0.1:$PORT/v2/bench/img/blobs/sha256:$l"
        done) &
    done
    wait $(jobs -p | grep -v "^$SERVER_PID\$") 2>/dev/null || true
    t1=$(now)
    RESULT[$kind.c16_wall]=$(echo "$t1 - $t0" | bc)
    RESULT[$kind.c16_cpu]=$(echo "$(cpu_seconds "$SERVER_PID") - $cpu0" | bc)
    RESULT[$kind.c16_mbps]=$(echo "scale=0; 16 * $TOTAL_MB / ${RESULT[$kind.c16_wall]}" | bc)
    stop_server
done

ratio() { echo "scale=2; $1 / $2" | bc; }
printf '\n%-44s %12s %14s %8s\n' "metric (median of $RUNS where repeated)" berth distribution ratio
row() { printf '%-44s %12s %14s %8s\n' "$1" "${RESULT[berth.$2]}" "${RESULT[distribution.$2]}" \
    "$(ratio "${RESULT[berth.$2]}" "${RESULT[distribution.$2]}")"; }
row "skopeo push ${TOTAL_MB} MB, wall s" push
row "skopeo pull ${TOTAL_MB} MB, wall s" pull
row "server CPU s, one push + one pull" cpu
row "${BIG_MB} MB blob PUT, wall s" big_wall
row "${BIG_MB} MB blob PUT, server CPU s" big_cpu
row "peak RSS during ${BIG_MB} MB PUT, MB" big_rss
row "16 concurrent pulls x ${TOTAL_MB} MB, wall s" c16_wall
row "16 concurrent pulls, server CPU s" c16_cpu
row "16 concurrent pulls, MB/s" c16_mbps
