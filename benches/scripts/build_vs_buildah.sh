#!/usr/bin/env bash
# Dockerfile build, side by side with buildah (apt: buildah 1.28) on the same 7-step context:
# FROM scratch, COPY a static busybox, RUN `busybox --install -s /bin`, COPY a file, RUN a shell
# line, ENV, CMD. Measures a cold build (empty store every run), a cached rebuild, and whether two
# cold builds give one digest. Then a multi-stage Dockerfile (a tools stage, two independent
# stages on it, a final scratch stage assembled with COPY --from; berth builds the two
# independent stages concurrently), cold and cached. Needs root, hyperfine, buildah,
# busybox-static.
#
#   cargo build --release -p berth-examples --bin berth --bin berth-runtime
#   sudo benches/scripts/build_vs_buildah.sh [path/to/berth] [runs]
set -euo pipefail

BERTH=${1:-target/release/berth}
RUNS=${2:-10}
BERTH=$(realpath "$BERTH")
WORK=$(mktemp -d /tmp/berth-bench-build.XXXXXX)
trap 'buildah --root "$WORK/bh" --runroot "$WORK/bhrun" --storage-driver overlay rmi -a -f >/dev/null 2>&1 || true;
      umount -R "$WORK"/* >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT

CTX=$WORK/context
mkdir -p "$CTX"
cp /bin/busybox "$CTX/busybox"
echo hello > "$CTX/hello.txt"
cat > "$CTX/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY hello.txt /etc/hello.txt
RUN echo "built at step 5" > /etc/built && cat /etc/hello.txt >> /etc/built
ENV GREETING=hello
CMD ["sh", "-c", "cat /etc/built"]
DOCKERFILE

MCTX=$WORK/multi
mkdir -p "$MCTX"
cp /bin/busybox "$MCTX/busybox"
cat > "$MCTX/Dockerfile" <<'DOCKERFILE'
FROM scratch AS tools
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]

FROM tools AS left
RUN mkdir -p /out && for i in 1 2 3 4 5; do echo "left $i" > /out/left$i; done

FROM tools AS right
RUN mkdir -p /out && seq 1 1000 > /out/right

FROM scratch
COPY --from=tools /bin/busybox /bin/busybox
COPY --from=left /out/ /out/
COPY --from=right /out/ /out/
CMD ["/bin/busybox", "ls", "/out"]
DOCKERFILE

berth_build() { "$BERTH" --root "$1" image build -q -t bench:latest "$CTX"; }
buildah_build() {
    buildah --root "$WORK/bh" --runroot "$WORK/bhrun" --storage-driver overlay \
        bud --isolation "$1" --layers -q -t bench "$CTX" >/dev/null
}
buildah_clean() { buildah --root "$WORK/bh" --runroot "$WORK/bhrun" --storage-driver overlay rmi -a -f >/dev/null 2>&1 || true; }
BUILDAH="buildah --root $WORK/bh --runroot $WORK/bhrun --storage-driver overlay bud --layers -q -t bench"
export -f berth_build buildah_build buildah_clean
export BERTH CTX MCTX WORK

echo "== digest stability (two cold builds on fresh roots)"
d1=$(berth_build "$WORK/r1"); d2=$(berth_build "$WORK/r2")
echo "berth:   $d1"
echo "berth:   $d2  $([ "$d1" = "$d2" ] && echo SAME || echo DIFFERENT)"
for i in 1 2; do
    buildah_clean
    buildah --root "$WORK/bh" --runroot "$WORK/bhrun" --storage-driver overlay \
        bud --isolation chroot --layers -q --iidfile "$WORK/iid$i" -t bench "$CTX" >/dev/null
done
echo "buildah: $(cat "$WORK/iid1")"
echo "buildah: $(cat "$WORK/iid2")  $(cmp -s "$WORK/iid1" "$WORK/iid2" && echo SAME || echo DIFFERENT)"
"$BERTH" --root "$WORK/r1" run --rm bench:latest

echo "== cold build (empty store each run)"
hyperfine -N --warmup 1 --runs "$RUNS" --export-markdown "$WORK/cold.md" \
    --prepare "bash -c 'umount -R $WORK/cold 2>/dev/null; rm -rf $WORK/cold; sync'" \
    -n berth "$BERTH --root $WORK/cold image build -q -t bench:latest $CTX" \
    --prepare "bash -c 'buildah_clean; sync'" \
    -n "buildah chroot" "$BUILDAH --isolation chroot $CTX"
# buildah's oci isolation runs runc, which fails on some hosts (this one's hybrid cgroups).
hyperfine -N --runs "$RUNS" --prepare "bash -c 'buildah_clean; sync'" \
    -n "buildah oci" "$BUILDAH --isolation oci $CTX" || echo "buildah --isolation oci failed on this host"

echo "== cached rebuild"
berth_build "$WORK/warm" >/dev/null
buildah_build chroot
hyperfine -N --warmup 2 --runs "$RUNS" --export-markdown "$WORK/cached.md" \
    -n berth "$BERTH --root $WORK/warm image build -q -t bench:latest $CTX" \
    -n "buildah chroot" "$BUILDAH --isolation chroot $CTX"
cat "$WORK/cold.md" "$WORK/cached.md"

echo "== multi-stage: cold build (empty store each run)"
hyperfine -N --warmup 1 --runs "$RUNS" --export-markdown "$WORK/multi-cold.md" \
    --prepare "bash -c 'umount -R $WORK/mcold 2>/dev/null; rm -rf $WORK/mcold; sync'" \
    -n "berth multi-stage" "$BERTH --root $WORK/mcold image build -q -t multi:latest $MCTX" \
    --prepare "bash -c 'buildah_clean; sync'" \
    -n "buildah chroot multi-stage" "$BUILDAH --isolation chroot $MCTX"

echo "== multi-stage: cached rebuild"
"$BERTH" --root "$WORK/mwarm" image build -q -t multi:latest "$MCTX" >/dev/null
$BUILDAH --isolation chroot "$MCTX" >/dev/null
hyperfine -N --warmup 2 --runs "$RUNS" --export-markdown "$WORK/multi-cached.md" \
    -n "berth multi-stage" "$BERTH --root $WORK/mwarm image build -q -t multi:latest $MCTX" \
    -n "buildah chroot multi-stage" "$BUILDAH --isolation chroot $MCTX"
"$BERTH" --root "$WORK/mwarm" run --rm multi:latest
cat "$WORK/multi-cold.md" "$WORK/multi-cached.md"
