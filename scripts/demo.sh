#!/usr/bin/env bash
# Berth's cluster demo, on one host with embedded defaults and no internet:
#   1. bring a 3-node cluster up (API server, store, registry, scheduler, controllers, 3 agents),
#   2. build a small web app image from scripts/demo-web and push it to the cluster's registry,
#   3. deploy 3 replicas with kubectl, show them Running on different nodes, serve a request
#      through each of them (kubectl port-forward, through the API server's node proxy),
#   4. roll out version 2 (kubectl rollout status),
#   5. kill a container and see it restarted; kill a whole node agent and see its pod recreated
#      on the other nodes, then start the agent again,
#   6. tear everything down and check that no mount, cgroup, process or state is left.
# Needs root (namespaces, overlay mounts, cgroups). The single-host engine demo is
# scripts/demo-engine.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $EUID -ne 0 ]]; then
  echo "demo: needs root (namespaces, overlay mounts, cgroups): run it with sudo" >&2
  exit 1
fi
# A fresh machine has only a Rust toolchain: install what building and running the demo needs.
source scripts/packages.sh
ensure_packages "${BERTH_BUILD_PACKAGES[@]}" "${BERTH_DEMO_PACKAGES[@]}"
# kubectl drives the cluster; Debian packages it as kubernetes-client.
command -v kubectl >/dev/null || ensure_packages kubernetes-client

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
say() { printf '    %s\n' "$*"; }

step "building berth"
cargo build --quiet -p berth-examples --bin berth
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
berth="$target_dir/debug/berth"

work=$(mktemp -d /tmp/berth-demo.XXXXXX)
root="$work/root"
pf_pids=()
cleanup() {
  set +e
  for p in "${pf_pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  [[ -d "$root/cluster" ]] && "$berth" cluster down --root "$root" >/dev/null 2>&1
  findmnt -rn -o TARGET | grep "^$work" | sort -r | xargs -r -n1 umount -l 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

step "berth cluster up --nodes 3 (short failure timeouts, so the demo does not wait minutes)"
"$berth" cluster up --root "$root" --nodes 3 \
  --lease-renew 1 --node-monitor-grace 4 --pod-eviction-timeout 2 --backoff 1 --eviction-disk-free 1
export KUBECONFIG="$root/cluster/kubeconfig"
kc() { kubectl --cache-dir "$work/kube-cache" "$@"; }
registry=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["registry"])' "$root/cluster/control-plane.json")
id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$root/cluster/cluster.json")
kc get nodes -o wide

step "building the web app (scripts/demo-web: busybox httpd) and pushing it to $registry"
build() { # build VERSION
  local ctx="$work/context-$1"
  mkdir -p "$ctx"
  cp scripts/demo-web/Dockerfile scripts/demo-web/index.html "$ctx/"
  cp /bin/busybox "$ctx/busybox"
  echo "$1" > "$ctx/version"
  "$berth" --root "$work/build" image build -q -t "$registry/demo/web:$1" "$ctx" >/dev/null
  "$berth" --root "$work/build" image push --insecure "$registry/demo/web:$1" 2>&1 | tail -1
  say "pushed $registry/demo/web:$1"
}
build 1

step "kubectl apply: a Deployment of 3 replicas (spread over the nodes)"
cat > "$work/web.yaml" <<YAML
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  strategy:
    rollingUpdate: {maxSurge: 1, maxUnavailable: 0}
  template:
    metadata:
      labels: {app: web}
    spec:
      terminationGracePeriodSeconds: 2
      affinity:
        podAntiAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
          - weight: 100
            podAffinityTerm:
              topologyKey: kubernetes.io/hostname
              labelSelector:
                matchLabels: {app: web}
      containers:
      - name: web
        image: $registry/demo/web:1
        ports: [{containerPort: 8080}]
        resources:
          requests: {cpu: 50m, memory: 16Mi}
          limits: {cpu: 200m, memory: 32Mi}
        readinessProbe:
          httpGet: {path: /, port: 8080}
          periodSeconds: 1
YAML
kc apply -f "$work/web.yaml"
kc rollout status deployment/web --timeout=120s
kc get pods -o wide

step "a request through each replica (kubectl port-forward -> API server -> node agent -> pod)"
serve_each() {
  # The old version's pods may still be terminating: serve once only the 3 new ones are left.
  for _ in $(seq 100); do
    [[ $(kc get pods -l app=web -o name | wc -l) -eq 3 ]] && break
    sleep 0.2
  done
  for pod in $(kc get pods -l app=web -o jsonpath='{.items[*].metadata.name}'); do
    local port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    kc port-forward "pod/$pod" "$port:8080" >/dev/null 2>&1 &
    local pf=$!
    pf_pids+=("$pf")
    local answer=""
    for _ in $(seq 100); do
      answer=$(curl -fsS "http://127.0.0.1:$port/" 2>/dev/null) && break
      sleep 0.1
    done
    kill "$pf" 2>/dev/null || true
    wait "$pf" 2>/dev/null || true
    say "curl via port-forward to $pod: ${answer:-no answer}"
    [[ -n "$answer" ]] || return 1
  done
}
serve_each

step "rolling out version 2"
build 2
kc set image deployment/web "web=$registry/demo/web:2"
kc rollout status deployment/web --timeout=120s
kc get pods -o wide
serve_each

step "killing a container (SIGKILL from the host): the agent restarts it"
pod=$(kc get pods -l app=web -o jsonpath='{.items[0].metadata.name}')
uid=$(kc get pod "$pod" -o jsonpath='{.metadata.uid}')
procs=$(find "/sys/fs/cgroup/memory/berth-cluster-$id" -path "*pod$uid/*/cgroup.procs" 2>/dev/null | head -1)
pid=$(head -1 "$procs")
say "pod $pod: container process $pid (cgroup ${procs%/cgroup.procs})"
kill -9 "$pid"
for _ in $(seq 100); do
  restarts=$(kc get pod "$pod" -o jsonpath='{.status.containerStatuses[0].restartCount}')
  ready=$(kc get pod "$pod" -o jsonpath='{.status.containerStatuses[0].ready}')
  [[ "$restarts" -ge 1 && "$ready" == true ]] && break
  sleep 0.2
done
kc get pod "$pod" -o wide
say "restartCount: $restarts"

step "killing a whole node agent (SIGKILL): its node goes NotReady, its pod is recreated elsewhere"
victim=$(kc get pod "$pod" -o jsonpath='{.spec.nodeName}')
agent=$(cat "$root/cluster/nodes/$victim/agent.pid")
say "node $victim: agent pid $agent"
kill -9 "$agent"
for _ in $(seq 300); do
  status=$(kc get node "$victim" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')
  [[ "$status" != True ]] && break
  sleep 0.1
done
kc get nodes
for _ in $(seq 300); do
  running=$(kc get pods -l app=web --field-selector=status.phase=Running -o jsonpath='{range .items[?(@.spec.nodeName!="'"$victim"'")]}{.metadata.name}{"\n"}{end}' | grep -c . || true)
  [[ "$running" -ge 3 ]] && break
  sleep 0.2
done
kc get pods -o wide
say "$running replicas Running on the remaining nodes"

step "starting the agent again (berth cluster up starts what is down): it cleans up its old pod"
"$berth" cluster up --root "$root" >/dev/null
kc get nodes
for _ in $(seq 150); do
  left=$(kc get pods -l app=web -o jsonpath='{range .items[?(@.spec.nodeName=="'"$victim"'")]}{.metadata.name}{"\n"}{end}' | grep -c . || true)
  [[ "$left" -eq 0 ]] && break
  sleep 0.2
done
kc get pods -o wide

step "berth cluster down"
"$berth" cluster down --root "$root"
step "checking that nothing is left"
leftover=0
if findmnt -rn -o TARGET | grep -q "^$work"; then say "mounts left:"; findmnt -rn -o TARGET | grep "^$work"; leftover=1; fi
if ls -d /sys/fs/cgroup/*/berth-cluster-"$id" 2>/dev/null | grep -q .; then say "cgroups left"; leftover=1; fi
if pgrep -f -- "$root/" >/dev/null; then say "processes left:"; pgrep -af -- "$root/"; leftover=1; fi
if grep -lsa "BERTH_NODE_SHIM=$root" /proc/[0-9]*/environ 2>/dev/null | grep -q .; then say "container shims left"; leftover=1; fi
if [[ -e "$root/cluster" ]]; then say "state left: $root/cluster"; leftover=1; fi
if ip -o link show 2>/dev/null | grep -q "berth-$id"; then say "veths left"; leftover=1; fi
((leftover == 0)) && say "no mount, cgroup, process, veth or state left"
exit "$leftover"
