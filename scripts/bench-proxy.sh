#!/usr/bin/env bash
# Measures msd proxy against a direct connection in one run, on the loopback interface.
#
# An nginx on 127.0.0.1 serves a 13-byte body; wrk loads it directly, then through
# `msd proxy`, with keep-alive connections (forwarding cost) and with a new connection per
# request (connect and pick cost). Needs nginx and wrk (Debian packages nginx-light or nginx, and
# wrk) and a release build: cargo build --release -p msd-cli.
set -euo pipefail
cd "$(dirname "$0")/.."

msd=target/release/msd
duration=${DURATION:-10s}
threads=${THREADS:-1}
connections=${CONNECTIONS:-32}
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

backend_port=18181
proxy_port=18182
cat >"$work/nginx.conf" <<CONF
worker_processes 1;
pid $work/nginx.pid;
error_log $work/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    server {
        listen 127.0.0.1:$backend_port;
        location / { return 200 "hello from 1\n"; }
    }
}
CONF
nginx -c "$work/nginx.conf"

group=$("$msd" group new --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["group_id"])')
export MSD_GROUP=$group MSD_LOG=warn
"$msd" announce --interface lo --ipv4 --id backend-1 --url "http://127.0.0.1:$backend_port/" &
pids+=($!)
"$msd" proxy --interface lo --ipv4 --listen "127.0.0.1:$proxy_port" &
pids+=($!)
for _ in $(seq 50); do
    curl -sf "http://127.0.0.1:$proxy_port/" >/dev/null && break
    sleep 0.1
done

run() {
    local label=$1 url=$2
    shift 2
    echo "== $label"
    wrk -t"$threads" -c"$connections" -d"$duration" --latency "$@" "$url" | grep -E 'Requests/sec|Latency  |50%|99%'
}
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)"
echo "wrk -t$threads -c$connections -d$duration"
run "direct, keep-alive" "http://127.0.0.1:$backend_port/"
run "msd proxy, keep-alive" "http://127.0.0.1:$proxy_port/"
run "direct, new connection per request" "http://127.0.0.1:$backend_port/" -H "Connection: close"
run "msd proxy, new connection per request" "http://127.0.0.1:$proxy_port/" -H "Connection: close"
