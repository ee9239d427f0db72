#!/usr/bin/env bash
# Tracker benchmark (issue "Tracker and origin store"): `GET /chunks/{id}` throughput on loopback
# for ~64 KiB chunks, `shoal-tracker serve` against Debian's nginx serving the same files from
# the same data directory under the same URLs, same concurrency, same CPU budget:
#  - both servers pinned to core $SERVER_CPU (taskset), one at a time; wrk pinned to $CLIENT_CPU;
#  - nginx: one worker process, sendfile on, keep-alive without a request cap, access log off;
#  - Shoal: the per-client rate limit lifted by a --config file (the only non-default setting).
# wrk cycles through $CHUNKS distinct chunk URLs, $CONNS connections, $SECS s per run (after a
# 2 s warm-up), $REPS runs per server alternating, best run reported. The server's CPU time
# during each run is read from /proc, so a client-bound run shows up as < 100 % server CPU.
# HOT_CACHE_BYTES overrides Shoal's in-memory cache of verified chunks (0 = off: the cold path).
# Prints a Markdown table for BENCHMARKS.md. Needs: nginx, wrk, curl, singularity-music.
# Traffic goes to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

for c in nginx wrk curl taskset; do
  command -v "$c" >/dev/null || { echo "needs $c: apt-get install nginx wrk curl util-linux" >&2; exit 1; }
done

MUSIC=${MUSIC:-/usr/share/games/singularity/music}
NTRACKS=${NTRACKS:-3}
CHUNKS=${CHUNKS:-64}
CONNS=${CONNS:-16}
SECS=${SECS:-10}
REPS=${REPS:-1}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
TARGET=${CARGO_TARGET_DIR:-target}

cargo build --release -q -p shoal-tracker
BIN=$TARGET/release/shoal-tracker

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# CPU seconds (user + system, all threads) used so far by the given processes.
cpu_secs() {
  local ticks=0 p
  for p in "$@"; do
    # Fields after the ")" of the command name: utime is the 12th, stime the 13th.
    ticks=$((ticks + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
  done
  awk "BEGIN{printf \"%.2f\", $ticks / $(getconf CLK_TCK)}"
}

# --- Data: a few real tracks imported into a fresh data directory.
data=$work/data
mapfile -t tracks < <(find "$MUSIC" -maxdepth 1 -name '*.ogg' | sort | head -n "$NTRACKS")
[ ${#tracks[@]} -gt 0 ] || { echo "no music in $MUSIC: apt-get install singularity-music" >&2; exit 1; }
"$BIN" import --data "$data" "${tracks[@]}" >"$work/import.log"

# The largest chunks (full-size ones are just under 64 KiB).
mapfile -t chunk_files < <(find "$data/chunks" -type f -printf '%s %p\n' | sort -rn | head -n "$CHUNKS" | cut -d' ' -f2)
[ ${#chunk_files[@]} -eq "$CHUNKS" ] || { echo "only ${#chunk_files[@]} chunks imported; raise NTRACKS" >&2; exit 1; }
total_bytes=0
{
  echo 'local paths = {'
  for f in "${chunk_files[@]}"; do
    echo "  \"/chunks/$(basename "$f")\","
    total_bytes=$((total_bytes + $(stat -c %s "$f")))
  done
  echo '}'
  echo 'local i = 0'
  echo 'request = function()'
  echo '  i = i % #paths + 1'
  echo '  return wrk.format("GET", paths[i])'
  echo 'end'
} >"$work/urls.lua"
mean_bytes=$((total_bytes / CHUNKS))
min_bytes=$(stat -c %s "${chunk_files[-1]}")
first=/chunks/$(basename "${chunk_files[0]}")

# --- Shoal.
printf '[http]\nrequests_per_sec = 1e9\nburst = 1e9\n' >"$work/tracker.toml"
# HOT_CACHE_BYTES=0 measures the cold path: every request reads and re-verifies the file.
if [ -n "${HOT_CACHE_BYTES:-}" ]; then
  printf 'hot_cache_bytes = %s\n' "$HOT_CACHE_BYTES" >>"$work/tracker.toml"
fi
RUST_LOG=warn taskset -c "$SERVER_CPU" "$BIN" serve --config "$work/tracker.toml" --data "$data" \
  --http 127.0.0.1:0 >"$work/shoal.out" 2>"$work/shoal.err" &
shoal_pid=$!
pids+=("$shoal_pid")
for _ in $(seq 100); do
  grep -q '^listening on ' "$work/shoal.out" 2>/dev/null && break
  kill -0 "$shoal_pid" 2>/dev/null || { cat "$work/shoal.err" >&2; exit 1; }
  sleep 0.1
done
shoal_url=$(sed -n 's/^listening on //p' "$work/shoal.out" | head -1)
[ -n "$shoal_url" ] || { echo "shoal-tracker serve did not start" >&2; cat "$work/shoal.err" >&2; exit 1; }

# --- nginx: private prefix, foreground, one worker, same URLs mapped onto DATA/chunks/ab/<id>.
ng=$work/nginx
mkdir -p "$ng/logs"
ng_port=$(free_port)
user_line=""
if [ "$(id -u)" -eq 0 ]; then user_line="user root;"; fi # workers must read the 0700 temp dir
cat >"$ng/nginx.conf" <<EOF
$user_line
daemon off;
worker_processes 1;
pid $ng/nginx.pid;
error_log $ng/logs/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_timeout 65;
  keepalive_requests 1000000000;
  client_body_temp_path $ng/tmp_body;
  proxy_temp_path $ng/tmp_proxy;
  fastcgi_temp_path $ng/tmp_fastcgi;
  uwsgi_temp_path $ng/tmp_uwsgi;
  scgi_temp_path $ng/tmp_scgi;
  server {
    listen 127.0.0.1:$ng_port;
    location ~ "^/chunks/([0-9a-f]{2})([0-9a-f]{62})\$" {
      alias $data/chunks/\$1/\$1\$2;
      default_type application/octet-stream;
      add_header Cache-Control "public, max-age=31536000, immutable";
    }
  }
}
EOF
taskset -c "$SERVER_CPU" nginx -p "$ng" -c "$ng/nginx.conf" -e "$ng/logs/error.log" &
ng_pid=$!
pids+=("$ng_pid")
nginx_url=http://127.0.0.1:$ng_port
for _ in $(seq 100); do
  curl -sf -o /dev/null "$nginx_url$first" && break
  kill -0 "$ng_pid" 2>/dev/null || { cat "$ng/logs/error.log" >&2; exit 1; }
  sleep 0.1
done
ng_worker=$(ps -o pid= --ppid "$ng_pid" | tr -d ' ' | head -1)
[ -n "$ng_worker" ] || { echo "nginx worker not found" >&2; exit 1; }

# Both serve the same bytes under the same URL.
curl -sf -o "$work/a" "$shoal_url$first"
curl -sf -o "$work/b" "$nginx_url$first"
cmp -s "$work/a" "$work/b" && cmp -s "$work/a" "${chunk_files[0]}" \
  || { echo "Shoal and nginx serve different bytes for $first" >&2; exit 1; }

# One wrk run: prints "req/s p50_ms p99_ms server_cpu_percent".
run_wrk() { # URL SECONDS PID...
  local url=$1 secs=$2
  shift 2
  local before after out
  before=$(cpu_secs "$@")
  out=$(taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${secs}s" --latency -s "$work/urls.lua" "$url")
  after=$(cpu_secs "$@")
  if grep -q 'Non-2xx\|Socket errors' <<<"$out"; then
    echo "wrk saw errors against $url:" >&2
    echo "$out" >&2
    exit 1
  fi
  local rps p50 p99
  rps=$(awk '/^Requests\/sec:/{print $2}' <<<"$out")
  p50=$(awk '$1=="50%"{print $2}' <<<"$out")
  p99=$(awk '$1=="99%"{print $2}' <<<"$out")
  echo "$rps $(to_ms "$p50") $(to_ms "$p99") $(awk "BEGIN{printf \"%.0f\", 100 * ($after - $before) / $secs}")"
}
to_ms() { # wrk prints 812.00us, 1.23ms, 1.02s
  awk -v v="$1" 'BEGIN{
    if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
    else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
    else { printf "%s", v } }'
}

best_shoal="0 0 0 0"
best_nginx="0 0 0 0"
better() { awk -v a="$1" -v b="$2" 'BEGIN{split(a, x, " "); split(b, y, " "); exit !(x[1] > y[1])}'; }
for r in $(seq "$REPS"); do
  run_wrk "$shoal_url" 2 "$shoal_pid" >/dev/null
  s=$(run_wrk "$shoal_url" "$SECS" "$shoal_pid")
  echo "run $r shoal: $s" >&2
  if better "$s" "$best_shoal"; then best_shoal=$s; fi
  run_wrk "$nginx_url" 2 "$ng_worker" >/dev/null
  n=$(run_wrk "$nginx_url" "$SECS" "$ng_worker")
  echo "run $r nginx: $n" >&2
  if better "$n" "$best_nginx"; then best_nginx=$n; fi
done

read -r s_rps s_p50 s_p99 s_cpu <<<"$best_shoal"
read -r n_rps n_p50 n_p99 n_cpu <<<"$best_nginx"
mbs() { awk "BEGIN{printf \"%.0f\", $1 * $mean_bytes / 1e6}"; }
fmt() { awk "BEGIN{printf \"%.0f\", $1}"; }
per_cpu() { awk "BEGIN{c = $2; if (c < 1) c = 1; printf \"%.0f\", $1 * 100 / c}"; }
ratio() { awk "BEGIN{printf \"%.2f\", $1 / $2}"; }

echo "Data: ${#tracks[@]} tracks from $MUSIC imported by shoal-tracker import; $CHUNKS"
echo "distinct chunks of $min_bytes–$(stat -c %s "${chunk_files[0]}") bytes (mean $mean_bytes), cycled by a wrk Lua script."
echo "wrk -t1 -c$CONNS -d${SECS}s --latency on CPU $CLIENT_CPU; each server alone on CPU $SERVER_CPU;"
echo "best of $REPS run(s) after a 2 s warm-up; $(nproc) CPUs; $(nginx -v 2>&1 | sed 's/.*: //'), wrk $(wrk -v 2>&1 | awk 'NR==1{print $2}')."
echo
echo "| server | requests/s | payload MB/s | latency p50 | latency p99 | server CPU | requests per CPU-second |"
echo "|---|---|---|---|---|---|---|"
echo "| nginx (1 worker, sendfile) | $(fmt "$n_rps") | $(mbs "$n_rps") | ${n_p50} ms | ${n_p99} ms | ${n_cpu} % | $(per_cpu "$n_rps" "$n_cpu") |"
echo "| shoal-tracker serve | $(fmt "$s_rps") | $(mbs "$s_rps") | ${s_p50} ms | ${s_p99} ms | ${s_cpu} % | $(per_cpu "$s_rps" "$s_cpu") |"
echo "| **Shoal ÷ nginx** (target ≥ 0.8) | **$(ratio "$s_rps" "$n_rps")** | | | | | $(awk "BEGIN{a = $s_cpu < 1 ? 1 : $s_cpu; b = $n_cpu < 1 ? 1 : $n_cpu; printf \"%.2f\", ($s_rps / a) / ($n_rps / b)}") |"
