#!/usr/bin/env bash
# The cluster's two startup figures, on one host, as root:
#   1. `berth cluster up --nodes 3` -> all three Nodes Ready (what `cluster up` reports), over
#      ROUNDS fresh clusters;
#   2. pod startup: create -> Running on the pod watch for PODS pods spread over the 3 agents,
#      the image already on every node (a DaemonSet pulled it first), p50/p99 (benches bin
#      pod_startup).
#
#   cargo build --profile perf -p berth-examples --bin berth
#   cargo build --profile perf -p berth-benches --bin pod_startup
#   sudo benches/scripts/pod_startup.sh [target/perf] [PODS] [PARALLEL] [ROUNDS]
set -euo pipefail
DIR=$(realpath "${1:-target/perf}")
PODS=${2:-100}
PARALLEL=${3:-10}
ROUNDS=${4:-5}
BERTH=$DIR/berth
WORK=$(mktemp -d /tmp/berth-bench-pods.XXXXXX)
trap '[[ -d $WORK/root/cluster ]] && "$BERTH" cluster down --root "$WORK/root" >/dev/null 2>&1; rm -rf "$WORK"' EXIT
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"

echo "== cluster up -> 3 nodes Ready ($ROUNDS rounds)"
for _ in $(seq "$ROUNDS"); do
  "$BERTH" cluster up --root "$WORK/root" --nodes 3 --eviction-disk-free 1 | head -1
  "$BERTH" cluster down --root "$WORK/root" >/dev/null
done

echo "== pod startup: $PODS pods, $PARALLEL created at a time, 3 agents"
"$BERTH" cluster up --root "$WORK/root" --nodes 3 --eviction-disk-free 1 | head -1
export KUBECONFIG=$WORK/root/cluster/kubeconfig
registry=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["registry"])' "$WORK/root/cluster/control-plane.json")
image=$registry/bench/busybox:1
"$BERTH" --root "$WORK/build" image import --busybox /bin/busybox "$image" >/dev/null
"$BERTH" --root "$WORK/build" image push --insecure "$image" >/dev/null 2>&1
# Put the image on every node first: the figure is about starting pods, not pulling.
kubectl --cache-dir "$WORK/cache" apply -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: warm}
spec:
  selector: {matchLabels: {app: warm}}
  template:
    metadata: {labels: {app: warm}}
    spec:
      terminationGracePeriodSeconds: 0
      containers: [{name: c, image: "$image", command: ["sleep", "3600"]}]
YAML
for _ in $(seq 600); do
  n=$(kubectl --cache-dir "$WORK/cache" get pods -l app=warm --field-selector=status.phase=Running -o name | wc -l)
  [[ $n -ge 3 ]] && break
  sleep 0.1
done
kubectl --cache-dir "$WORK/cache" delete daemonset warm --wait=true >/dev/null
"$DIR/pod_startup" --kubeconfig "$KUBECONFIG" --image "$image" --pods "$PODS" --parallel "$PARALLEL"
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
