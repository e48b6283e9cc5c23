#!/usr/bin/env bash
# Sidecar data-plane benchmark: fixed-rate HTTP/1.1 keep-alive load with oha
# (16 connections, 1 KiB request and response bodies) at each RATE, straight
# to the origin and through two proxies (client side + server side) of each
# kind: remora-sidecar (current-thread runtime, and multi-thread with one
# worker as `remora-mt1`), remora-sidecar with mesh mTLS between the two hops
# (`remora-mtls`), nginx, HAProxy (one worker/thread each), and a tokio
# copy_bidirectional L4 proxy as the floor. Prints a Markdown table (also saved to
# target/bench/sidecar-results.md).
#
#   bench/sidecar.sh                 # RATES="1000 4000" DURATION=15
#   RATES=1000 DURATION=5 KINDS="direct remora" bench/sidecar.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RATES="${RATES:-1000 4000}"
DURATION="${DURATION:-15}"
CONNS=16
OHA=$(bench/install-tools.sh | tail -1)
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)

cargo build -q --release -p remora-sidecar --bin remora-sidecar --example l4proxy --example mesh_certs
SIDECAR=target/release/remora-sidecar
L4=target/release/examples/l4proxy

WORK=$(mktemp -d)
OUT=target/bench
mkdir -p "$OUT"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

head -c 1024 /dev/zero | tr '\0' 'x' > "$WORK/body"
BODY=$(cat "$WORK/body")

# The origin: nginx answering every request with 1 KiB.
nginx_conf() { # name listen body
  mkdir -p "$WORK/$1"
  cat > "$WORK/$1/nginx.conf" <<NGX
worker_processes 1;
daemon off;
user root;
pid $WORK/$1/nginx.pid;
error_log $WORK/$1/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/$1/body;
  proxy_temp_path $WORK/$1/proxy;
  fastcgi_temp_path $WORK/$1/fcgi;
  uwsgi_temp_path $WORK/$1/uwsgi;
  scgi_temp_path $WORK/$1/scgi;
  keepalive_requests 1000000;
  $3
}
NGX
}
nginx_conf origin "" "server { listen 127.0.0.1:18080; location / { return 200 '$BODY'; } }"
"$NGINX" -c "$WORK/origin/nginx.conf" & PIDS+=($!)

# Two hops of each proxy: A (client side) -> B (server side) -> origin.
nginx_proxy() { # name listen next
  nginx_conf "$1" "" "upstream up { server $3; keepalive 64; }
  server { listen $2; location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
  "$NGINX" -c "$WORK/$1/nginx.conf" & PIDS+=($!)
}
haproxy_proxy() { # name listen next
  cat > "$WORK/$1.cfg" <<HAP
global
  nbthread 1
defaults
  mode http
  option http-keep-alive
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend f
  bind $2
  default_backend b
backend b
  http-reuse always
  server s1 $3
HAP
  "$HAPROXY" -db -f "$WORK/$1.cfg" & PIDS+=($!)
}
remora_proxy() { # name listen next admin [env...]
  cat > "$WORK/$1.json" <<JSON
{ "version": 1,
  "listeners": [{ "name": "$1", "direction": "outbound", "address": "$2" }],
  "admin": { "address": "$4" },
  "routes": [{ "name": "all", "domains": ["*"], "routes": [
    { "name": "all", "action": { "clusters": [{ "cluster": "next", "weight": 100 }] } }] }],
  "clusters": [{ "name": "next", "endpoints": { "static": [{ "address": "$3" }] } }],
  "accessLog": { "enabled": false },
  "runtime": { "workerThreads": ${REMORA_WORKERS:-1}, "logLevel": "warn" } }
JSON
  env "${@:5}" "$SIDECAR" run --config "$WORK/$1.json" & PIDS+=($!)
}

# Two sidecars with strict mTLS between them: A (outbound, cluster in mesh TLS
# mode) -> B (inbound listener, strict) -> origin.
target/release/examples/mesh_certs "$WORK/certs" client server
tls_json() { # sa mode
  echo "{ \"mode\": \"$2\", \"certFile\": \"$WORK/certs/$1/tls.crt\", \"keyFile\": \"$WORK/certs/$1/tls.key\", \"caFile\": \"$WORK/certs/$1/ca.crt\" }"
}
cat > "$WORK/remora-mtls-a.json" <<JSON
{ "version": 1,
  "listeners": [{ "name": "out", "direction": "outbound", "address": "127.0.0.1:19021" }],
  "admin": { "address": "127.0.0.1:19023" },
  "routes": [{ "name": "all", "domains": ["*"], "routes": [
    { "name": "all", "action": { "clusters": [{ "cluster": "next", "weight": 100 }] } }] }],
  "clusters": [{ "name": "next", "endpoints": { "static": [{ "address": "127.0.0.1:19022" }] },
                 "tls": { "mode": "mesh", "identity": "spiffe://cluster.local/ns/bench/sa/server" } }],
  "tls": $(tls_json client disabled),
  "accessLog": { "enabled": false },
  "runtime": { "workerThreads": 1, "logLevel": "warn" } }
JSON
cat > "$WORK/remora-mtls-b.json" <<JSON
{ "version": 1,
  "listeners": [{ "name": "in", "direction": "inbound", "address": "127.0.0.1:19022", "defaultCluster": "app" }],
  "admin": { "address": "127.0.0.1:19024" },
  "routes": [],
  "clusters": [{ "name": "app", "endpoints": { "static": [{ "address": "127.0.0.1:18080" }] } }],
  "tls": $(tls_json server strict),
  "accessLog": { "enabled": false },
  "runtime": { "workerThreads": 1, "logLevel": "warn" } }
JSON
"$SIDECAR" run --config "$WORK/remora-mtls-a.json" & PIDS+=($!)
"$SIDECAR" run --config "$WORK/remora-mtls-b.json" & PIDS+=($!)

nginx_proxy nginx-a 127.0.0.1:19101 127.0.0.1:19102
nginx_proxy nginx-b 127.0.0.1:19102 127.0.0.1:18080
haproxy_proxy haproxy-a 127.0.0.1:19201 127.0.0.1:19202
haproxy_proxy haproxy-b 127.0.0.1:19202 127.0.0.1:18080
remora_proxy remora-a 127.0.0.1:19001 127.0.0.1:19002 127.0.0.1:19003
remora_proxy remora-b 127.0.0.1:19002 127.0.0.1:18080 127.0.0.1:19004
# The same with tokio's multi-thread scheduler and one worker.
remora_proxy remora-mt-a 127.0.0.1:19011 127.0.0.1:19012 127.0.0.1:19013 REMORA_RUNTIME=multi-thread
remora_proxy remora-mt-b 127.0.0.1:19012 127.0.0.1:18080 127.0.0.1:19014 REMORA_RUNTIME=multi-thread
"$L4" 127.0.0.1:19301 127.0.0.1:19302 & PIDS+=($!)
"$L4" 127.0.0.1:19302 127.0.0.1:18080 & PIDS+=($!)
"$SIDECAR" wait-ready --admin 127.0.0.1:19003 --timeout 20s >/dev/null
"$SIDECAR" wait-ready --admin 127.0.0.1:19004 --timeout 20s >/dev/null
"$SIDECAR" wait-ready --admin 127.0.0.1:19013 --timeout 20s >/dev/null
"$SIDECAR" wait-ready --admin 127.0.0.1:19014 --timeout 20s >/dev/null
"$SIDECAR" wait-ready --admin 127.0.0.1:19023 --timeout 20s >/dev/null
"$SIDECAR" wait-ready --admin 127.0.0.1:19024 --timeout 20s >/dev/null
sleep 1

# Every process (and child) listening on a port: CPU ticks and VmHWM.
pids_on() { for port in "$@"; do ss -ltnpH "sport = :$port" | grep -o 'pid=[0-9]*' | cut -d= -f2; done | sort -u; }
ticks() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo "$t"; }
hwm_kib() { for p in "$@"; do awk '/VmHWM/{print $2}' "/proc/$p/status"; done | paste -sd' '; }
HZ=$(getconf CLK_TCK)

declare -A PORT=([direct]=18080 [l4-copy]=19301 [remora]=19001 [remora-mt1]=19011 [remora-mtls]=19021 [nginx]=19101 [haproxy]=19201)
declare -A HOPS=([direct]="" [l4-copy]="19301 19302" [remora]="19001 19002" [remora-mt1]="19011 19012" [remora-mtls]="19021 19022" [nginx]="19101 19102" [haproxy]="19201 19202")
RESULTS="$OUT/sidecar-raw.tsv"
: > "$RESULTS"
for rate in $RATES; do
  for kind in ${KINDS:-direct l4-copy remora remora-mt1 remora-mtls nginx haproxy}; do
    url="http://127.0.0.1:${PORT[$kind]}/"
    # Warm-up: connections and pools.
    "$OHA" --no-tui -z 2s -q "$rate" -c "$CONNS" -m POST -D "$WORK/body" "$url" >/dev/null
    read -r -a hops <<< "${HOPS[$kind]}"
    mapfile -t pids < <(pids_on "${hops[@]}")
    before=$(ticks "${pids[@]}")
    "$OHA" --no-tui --output-format json --latency-correction -z "${DURATION}s" -q "$rate" -c "$CONNS" \
      -m POST -D "$WORK/body" "$url" > "$OUT/oha-$kind-$rate.json"
    after=$(ticks "${pids[@]}")
    printf '%s\t%s\t%s\t%s\t%s\n' "$rate" "$kind" "$((after - before))" "$(hwm_kib "${pids[@]}")" "$OUT/oha-$kind-$rate.json" >> "$RESULTS"
  done
done

python3 - "$RESULTS" "$HZ" "$CONNS" "$DURATION" <<'PY' | tee "$OUT/sidecar-results.md"
import json, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
hz, conns, dur = int(sys.argv[2]), sys.argv[3], sys.argv[4]
base = {}
print(f"| rate (req/s) | path | p50 ms | p99 ms | added p50 ms | added p99 ms | ok/total | CPU core-s per 1k req (both hops) | peak RSS MiB (per hop) |")
print("|---|---|---|---|---|---|---|---|---|")
for rate, kind, ticks, hwm, path in rows:
    j = json.load(open(path))
    p = j["latencyPercentiles"]
    p50, p99 = p["p50"] * 1e3, p["p99"] * 1e3
    codes = j.get("statusCodeDistribution", {})
    ok = codes.get("200", 0)
    # Requests still in flight when -z ends are "aborted due to deadline": not failures.
    errors = {k: v for k, v in j.get("errorDistribution", {}).items() if "deadline" not in k}
    total = sum(codes.values()) + sum(errors.values())
    if kind == "direct":
        base[rate] = (p50, p99)
    b50, b99 = base.get(rate, (p50, p99))
    cpu = (int(ticks) / hz) / max(total, 1) * 1000
    rss = " + ".join(f"{int(k)/1024:.1f}" for k in hwm.split()) if hwm else "-"
    added = "-" if kind == "direct" else f"{p50-b50:+.3f}"
    added99 = "-" if kind == "direct" else f"{p99-b99:+.3f}"
    cpus = "-" if kind == "direct" else f"{cpu:.3f}"
    print(f"| {rate} | {kind} | {p50:.3f} | {p99:.3f} | {added} | {added99} | {ok}/{total} | {cpus} | {rss} |")
PY
