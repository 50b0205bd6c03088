#!/usr/bin/env bash
# Berth's end-to-end demo on one host, with embedded defaults and no external service:
#   1. make a build context around busybox-static and build an image from a Dockerfile,
#   2. serve Berth's own OCI registry on loopback and push the image to it,
#   3. pull it into a second, empty state root (as another host would),
#   4. run it there: a container in fresh namespaces, with cgroup limits, on an overlay snapshot,
#   5. remove the image there again.
# Needs root (namespaces, mounts, cgroups). Everything lives in a temporary directory, removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $EUID -ne 0 ]]; then
  echo "demo: needs root (namespaces, overlay mounts, cgroups): run it with sudo" >&2
  exit 1
fi
# A fresh machine has only a Rust toolchain: install what building and running the demo needs.
source scripts/packages.sh
ensure_packages "${BERTH_BUILD_PACKAGES[@]}" "${BERTH_DEMO_PACKAGES[@]}"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "building berth"
cargo build --quiet -p berth-examples --bins
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
berth="$target_dir/debug/berth"

work=$(mktemp -d /tmp/berth-demo.XXXXXX)
registry_pid=""
cleanup() {
  set +e
  [[ -n "$registry_pid" ]] && kill "$registry_pid" 2>/dev/null && wait "$registry_pid" 2>/dev/null
  # Remove any container the demo left (rm -f unmounts its snapshot and removes its cgroup).
  for root in "$work/host-a" "$work/host-b"; do
    [[ -d "$root" ]] || continue
    for id in $("$berth" --root "$root" ps -a -q 2>/dev/null); do "$berth" --root "$root" rm -f "$id" >/dev/null 2>&1; done
  done
  # Unmount whatever is still mounted below the work dir, deepest first, then remove it.
  findmnt -rn -o TARGET | grep "^$work" | sort -r | xargs -r -n1 umount -l 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

step "making a build context with busybox-static"
ctx="$work/context"
mkdir -p "$ctx"
cp /bin/busybox "$ctx/busybox"
echo "Hello from a Berth container!" > "$ctx/hello.txt"
cat > "$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY hello.txt /etc/hello.txt
RUN echo "built on $(uname -s) by uid $(id -u)" > /etc/build-info
ENV GREETING="hi there"
CMD ["/bin/sh", "-c", "cat /etc/hello.txt /etc/build-info; echo \"$GREETING from pid $$ on $(hostname)\"; ls /proc | grep -c '^[0-9]' | sed 's/^/processes visible: /'"]
DOCKERFILE

step "berth image build -t demo/hello:1"
"$berth" --root "$work/host-a" image build -t demo/hello:1 "$ctx"
"$berth" --root "$work/host-a" image ls

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
registry="127.0.0.1:$port"
step "berth registry serve --addr $registry"
"$berth" registry serve --addr "$registry" --root "$work/registry" &
registry_pid=$!
for _ in $(seq 50); do curl -fs "http://$registry/v2/" >/dev/null 2>&1 && break; sleep 0.1; done

step "berth image push $registry/demo/hello:1"
"$berth" --root "$work/host-a" image tag demo/hello:1 "$registry/demo/hello:1"
"$berth" --root "$work/host-a" image push --insecure "$registry/demo/hello:1"

step "berth image pull into a second, empty state root"
"$berth" --root "$work/host-b" image pull --insecure "$registry/demo/hello:1"

step "berth run --rm --memory 64m --pids-limit 64 $registry/demo/hello:1"
"$berth" --root "$work/host-b" run --rm --memory 64m --pids-limit 64 "$registry/demo/hello:1"

step "berth image rm $registry/demo/hello:1 (its blobs and layer snapshots go with it)"
"$berth" --root "$work/host-b" image rm "$registry/demo/hello:1"
"$berth" --root "$work/host-b" image ls

step "demo finished: build, push, pull, run and rm all worked"
