#!/usr/bin/env bash
# Import + unpack of a ~200 MB (uncompressed; ~100 MB gzip), 4-layer OCI image: Berth vs `umoci unpack`, same layout, same run.
#
#   benches/scripts/image_import.sh [RUNS]        (as root; needs umoci and python3)
#
# The layout is generated once (gzip layers of many small files plus a few large ones, half
# random and half text) under $BERTH_BENCH_DIR (default /var/tmp/berth-bench-image). Each run
# starts from an empty Berth root / bundle directory; `sync` and a page-cache drop separate runs.
# Berth: import into the content store (every blob verified) + unpack into an overlay snapshot
# chain (every diff id verified). umoci: unpack into a bundle (its layout is its store, so there
# is no import step). Reports the median of RUNS (default 5) and the ratio.
set -euo pipefail

RUNS=${1:-5}
WORK=${BERTH_BENCH_DIR:-/var/tmp/berth-bench-image}
LAYOUT="$WORK/layout"
REPO=$(cd "$(dirname "$0")/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target-image}

command -v umoci >/dev/null || { echo "umoci not installed" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "run as root (overlay mounts, umoci ownership)" >&2; exit 1; }

BERTH=${BERTH_IMAGE_IMPORT_BIN:-}
if [ -z "$BERTH" ]; then
    (cd "$REPO" && cargo build --quiet --release -p berth-image --example image_import)
    BERTH="$CARGO_TARGET_DIR/release/examples/image_import"
fi

if [ ! -f "$LAYOUT/index.json" ]; then
    mkdir -p "$WORK"
    python3 - "$LAYOUT" <<'PY'
import gzip, hashlib, io, json, os, random, sys, tarfile
out = sys.argv[1]
os.makedirs(f"{out}/blobs/sha256", exist_ok=True)
def put(data):
    d = hashlib.sha256(data).hexdigest()
    with open(f"{out}/blobs/sha256/{d}", "wb") as f:
        f.write(data)
    return {"digest": f"sha256:{d}", "size": len(data)}
rng = random.Random(42)
words = b"lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor ".split()
def text(n):
    return b" ".join(rng.choice(words) for _ in range(n // 6))[:n]
layers, diff_ids = [], []
for i in range(4):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(name, data):
            info = tarfile.TarInfo(name); info.size = len(data); info.mode = 0o644; info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
        for d in range(50):
            info = tarfile.TarInfo(f"l{i}/d{d}"); info.type = tarfile.DIRTYPE; info.mode = 0o755
            tar.addfile(info)
            for f in range(60):  # 3000 small files per layer, 1-12 KiB
                n = rng.randint(1024, 12 * 1024)
                add(f"l{i}/d{d}/f{f}", text(n) if f % 2 else os.urandom(n))
        add(f"l{i}/big-random", os.urandom(14 << 20))
        add(f"l{i}/big-text", text(14 << 20))
    raw = buf.getvalue()
    diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
    desc = put(gzip.compress(raw, compresslevel=6, mtime=0))
    desc["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip"
    layers.append(desc)
    print(f"layer {i}: {len(raw) >> 20} MiB raw, {desc['size'] >> 20} MiB gzip", file=sys.stderr)
config = json.dumps({"architecture": "amd64", "os": "linux",
                     "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
cdesc = put(config); cdesc["mediaType"] = "application/vnd.oci.image.config.v1+json"
manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": cdesc, "layers": layers}).encode()
mdesc = put(manifest); mdesc["mediaType"] = "application/vnd.oci.image.manifest.v1+json"
mdesc["annotations"] = {"org.opencontainers.image.ref.name": "bench"}
with open(f"{out}/index.json", "w") as f:
    json.dump({"schemaVersion": 2, "manifests": [mdesc]}, f)
with open(f"{out}/oci-layout", "w") as f:
    f.write('{"imageLayoutVersion":"1.0.0"}')
PY
fi
echo "layout: $(du -sh "$LAYOUT" | cut -f1) compressed, 4 layers"

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

berth_times=() umoci_times=()
for run in $(seq "$RUNS"); do
    ROOT=$(mktemp -d "$WORK/berth-root.XXXX")
    drop_caches
    t0=$(now); /usr/bin/time -f "berth cpu: %U user %S sys" "$BERTH" "$ROOT" "$LAYOUT:bench" >"$WORK/berth.out"; t1=$(now)
    berth_times+=("$(echo "$t1 - $t0" | bc)")
    cat "$WORK/berth.out"
    rm -rf "$ROOT"

    BUNDLE=$(mktemp -d "$WORK/umoci-bundle.XXXX"); rmdir "$BUNDLE"
    drop_caches
    t0=$(now); /usr/bin/time -f "umoci cpu: %U user %S sys" umoci unpack --image "$LAYOUT:bench" "$BUNDLE" >/dev/null; t1=$(now)
    umoci_times+=("$(echo "$t1 - $t0" | bc)")
    rm -rf "$BUNDLE"
    echo "run $run: berth ${berth_times[-1]}s umoci ${umoci_times[-1]}s"
done
b=$(printf '%s\n' "${berth_times[@]}" | median)
u=$(printf '%s\n' "${umoci_times[@]}" | median)
echo "median of $RUNS: berth import+unpack ${b}s, umoci unpack ${u}s, umoci/berth = $(echo "scale=2; $u / $b" | bc)x"
