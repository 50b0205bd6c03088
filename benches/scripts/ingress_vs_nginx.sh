#!/usr/bin/env bash
# Ingress proxy benchmark: Berth's Ingress proxy (berth-ingress) side by side with nginx from
# apt, both reverse-proxying the same backend (an nginx serving a small file), in the same run,
# driven by wrk with keep-alive connections.
#
#   benches/scripts/ingress_vs_nginx.sh [ROUNDS] [SECONDS] [CONNECTIONS]   (default 3 10 64)
#
# Needs wrk, nginx and the proxy example (INGRESS_PROXY, default
# target/perf/examples/ingress_proxy, from
# `cargo build --profile perf -p berth-ingress --example ingress_proxy`).
#
# Both proxies get the same backend, keep-alive upstream connections (nginx: `keepalive 128`,
# `proxy_http_version 1.1`) and two workers (nginx `worker_processes 2`, Tokio's default on 2
# cores); both add X-Forwarded-* headers. The backend nginx has one worker. Rounds alternate
# berth/nginx so drift in machine load hits both; the script prints each run, the medians,
# and the ratio berth/nginx of requests per second (>= 1: Berth at least as fast), plus wrk
# straight to the backend as the no-proxy ceiling.
set -euo pipefail

ROUNDS=${1:-3}
SECS=${2:-10}
CONNS=${3:-64}
THREADS=${THREADS:-2}
INGRESS_PROXY=${INGRESS_PROXY:-target/perf/examples/ingress_proxy}
[ -x "$INGRESS_PROXY" ] || { echo "no proxy at $INGRESS_PROXY (set INGRESS_PROXY)" >&2; exit 1; }
for tool in wrk nginx curl; do
    command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/berth-ingress-bench.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BACKEND_PORT=$(free_port)
NGINX_PORT=$(free_port)
BERTH_PORT=$(free_port)

mkdir -p "$WORK/backend/www" "$WORK/proxy"
printf 'hello from the backend, a small static answer of about one hundred bytes ........\n' >"$WORK/backend/www/index.html"
chmod -R a+rX "$WORK"

cat >"$WORK/backend/nginx.conf" <<CONF
worker_processes 1;
pid $WORK/backend/nginx.pid;
error_log $WORK/backend/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/backend; proxy_temp_path $WORK/backend;
    fastcgi_temp_path $WORK/backend; uwsgi_temp_path $WORK/backend; scgi_temp_path $WORK/backend;
    keepalive_requests 1000000;
    server { listen 127.0.0.1:$BACKEND_PORT; root $WORK/backend/www; }
}
CONF
cat >"$WORK/proxy/nginx.conf" <<CONF
worker_processes 2;
pid $WORK/proxy/nginx.pid;
error_log $WORK/proxy/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/proxy; proxy_temp_path $WORK/proxy;
    fastcgi_temp_path $WORK/proxy; uwsgi_temp_path $WORK/proxy; scgi_temp_path $WORK/proxy;
    keepalive_requests 1000000;
    upstream backend { server 127.0.0.1:$BACKEND_PORT; keepalive 128; }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        server_name bench.local;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_buffering on;
        }
    }
}
CONF

nginx -p "$WORK/backend" -c "$WORK/backend/nginx.conf" -g 'daemon off;' &
PIDS+=($!)
nginx -p "$WORK/proxy" -c "$WORK/proxy/nginx.conf" -g 'daemon off;' &
PIDS+=($!)
"$INGRESS_PROXY" "127.0.0.1:$BERTH_PORT" "127.0.0.1:$BACKEND_PORT" 2>"$WORK/berth.log" &
PIDS+=($!)

wait_up() {
    for _ in $(seq 100); do
        curl -sf -H 'Host: bench.local' "http://127.0.0.1:$1/" >/dev/null && return 0
        sleep 0.1
    done
    echo "nothing answers on port $1" >&2; exit 1
}
wait_up "$BACKEND_PORT"; wait_up "$NGINX_PORT"; wait_up "$BERTH_PORT"
for p in "$NGINX_PORT" "$BERTH_PORT"; do
    curl -sf -H 'Host: bench.local' "http://127.0.0.1:$p/" | grep -q 'hello from the backend' \
        || { echo "port $p does not proxy the backend" >&2; exit 1; }
done

# Requests/s and p99 latency of one wrk run against port $1.
run() {
    local out
    out=$(wrk -t"$THREADS" -c"$CONNS" -d"${SECS}s" --latency -H 'Host: bench.local' "http://127.0.0.1:$1/")
    local rps p99
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    local errors
    errors=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
    echo "$rps $p99 $errors"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

echo "load before: $(uptime)"
echo "wrk -t$THREADS -c$CONNS -d${SECS}s, $ROUNDS rounds, alternating"
wrk -t"$THREADS" -c"$CONNS" -d2s -H 'Host: bench.local' "http://127.0.0.1:$BERTH_PORT/" >/dev/null
wrk -t"$THREADS" -c"$CONNS" -d2s -H 'Host: bench.local' "http://127.0.0.1:$NGINX_PORT/" >/dev/null
B=(); N=()
for r in $(seq "$ROUNDS"); do
    b=$(run "$BERTH_PORT"); n=$(run "$NGINX_PORT")
    echo "round $r: berth $b | nginx $n"
    B+=("${b%% *}"); N+=("${n%% *}")
done
direct=$(run "$BACKEND_PORT")
bm=$(printf '%s\n' "${B[@]}" | median)
nm=$(printf '%s\n' "${N[@]}" | median)
echo "direct to the backend (no proxy): $direct"
echo "median req/s: berth $bm, nginx $nm, ratio berth/nginx $(awk -v b="$bm" -v n="$nm" 'BEGIN {printf "%.2f", b/n}')"
echo "load after: $(uptime)"
echo "berth proxy RSS: $(awk '/VmRSS/ {print $2, $3}' /proc/"${PIDS[2]}"/status)"
