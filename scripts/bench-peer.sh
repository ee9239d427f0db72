#!/usr/bin/env bash
# Peer benchmarks (issue "Peer client"), all on loopback in one run:
#  1. + 2. `cargo bench -p shoal-peer --bench network`: time to first audio from a peer against
#     the loopback RTT, and one peer's chunk serving throughput against bare quinn and the
#     tracker's HTTP origin (see peer/benches/network.rs);
#  3. the client's memory and CPU while playing: a tracker, one seeding `shoal-peer serve` and a
#     listener `shoal-peer play --output null --duration $PLAY_SECS` of a full real track
#     (decoded and discarded). The listener's /proc/PID/status (VmRSS, VmHWM) and /proc/PID/stat
#     (utime + stime) are sampled every $SAMPLE s; GNU time gives the whole run's totals.
# Prints Markdown for BENCHMARKS.md. Needs: sox, GNU time, singularity-music, taskset.
# Knobs: PLAY_SECS (60), SAMPLE (0.5), SKIP_NETWORK_BENCH=1 (part 3 only), and the bench's
# PEERBENCH_* variables. Traffic goes to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v /usr/bin/time >/dev/null || { echo "needs GNU time: apt-get install time" >&2; exit 1; }

PLAY_SECS=${PLAY_SECS:-60}
SAMPLE=${SAMPLE:-0.5}
SRC=${SRC:-/usr/share/games/singularity/music/A New Journey.ogg}
TARGET=${CARGO_TARGET_DIR:-target}
BIN=$TARGET/release

cargo build --release -q -p shoal-tracker -p shoal-peer
if [ "${SKIP_NETWORK_BENCH:-0}" != 1 ]; then
  cargo bench -q -p shoal-peer --bench network
fi

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits until file $1 has a line starting with $2 (process $3 must stay alive); prints the rest.
wait_line() {
  for _ in $(seq 200); do
    if grep -q "^$2" "$1" 2>/dev/null; then
      sed -n "s/^$2//p" "$1" | head -1
      return
    fi
    kill -0 "$3" 2>/dev/null || { echo "process $3 died" >&2; cat "$1.err" >&2 || true; exit 1; }
    sleep 0.1
  done
  echo "timed out waiting for '$2' in $1" >&2
  exit 1
}

"$BIN/shoal-tracker" import --data "$work/data" "$SRC" >"$work/import.log"
track=$(awk 'NR==1{print $1}' "$work/import.log")
[[ $track =~ ^[0-9a-f]{64}$ ]] || { echo "import printed: $(cat "$work/import.log")" >&2; exit 1; }

RUST_LOG=warn "$BIN/shoal-tracker" serve --data "$work/data" --http 127.0.0.1:0 \
  --listen /ip4/127.0.0.1/udp/0/quic-v1 >"$work/tracker.out" 2>"$work/tracker.out.err" &
pids+=($!)
url=$(wait_line "$work/tracker.out" "listening on " "$!")

"$BIN/shoal-peer" cache --cache "$work/seeder" add --data "$work/data" >/dev/null
RUST_LOG=warn "$BIN/shoal-peer" serve --tracker "$url" --cache "$work/seeder" \
  --listen /ip4/127.0.0.1/udp/0/quic-v1 >"$work/seeder.out" 2>"$work/seeder.out.err" &
pids+=($!)
wait_line "$work/seeder.out" "announced " "$!" >/dev/null

/usr/bin/time -f "%e %U %S %M" -o "$work/time.txt" \
  "$BIN/shoal-peer" play --json --tracker "$url" --cache "$work/listener" \
  --listen /ip4/127.0.0.1/udp/0/quic-v1 --output null --duration "$PLAY_SECS" "$track" \
  >"$work/play.json" 2>"$work/play.err" &
timer=$!
pids+=("$timer")
# The listener is GNU time's child.
listener=""
for _ in $(seq 100); do
  listener=$(pgrep -P "$timer" || true)
  [ -n "$listener" ] && break
  sleep 0.02
done
[ -n "$listener" ] || { echo "the listener did not start" >&2; exit 1; }
tck=$(getconf CLK_TCK)
start=$(date +%s.%N)
: >"$work/samples.txt"
while kill -0 "$listener" 2>/dev/null; do
  now=$(date +%s.%N)
  rss=$(awk '/^VmRSS/{print $2}' "/proc/$listener/status" 2>/dev/null || true)
  hwm=$(awk '/^VmHWM/{print $2}' "/proc/$listener/status" 2>/dev/null || true)
  ticks=$(sed 's/.*) //' "/proc/$listener/stat" 2>/dev/null | awk '{print $12 + $13}' || true)
  [ -n "$rss" ] && [ -n "$ticks" ] && echo "$(awk "BEGIN{print $now - $start}") $rss $hwm $ticks" >>"$work/samples.txt"
  sleep "$SAMPLE"
done
wait "$timer" || { echo "the listener failed:" >&2; cat "$work/play.err" >&2; exit 1; }

read -r wall user sys maxrss <"$work/time.txt"
# Steady state: from 10 s after start to the last sample.
steady=$(awk -v tck="$tck" '
  $1 >= 10 && !s { t0 = $1; c0 = $4; s = 1 }
  { t1 = $1; c1 = $4; if ($2 > peak) peak = $2; sum += $2; n++ }
  END { printf "%.2f %.3f %.1f %.1f", (c1 - c0) / tck / (t1 - t0) * 100, t1 - t0, peak / 1024, sum / n / 1024 }
' "$work/samples.txt")
read -r steady_cpu steady_secs peak_rss mean_rss <<<"$steady"
hwm=$(tail -1 "$work/samples.txt" | awk '{printf "%.1f", $3 / 1024}')
total_cpu=$(awk "BEGIN{printf \"%.2f\", ($user + $sys) / $wall * 100}")

echo
echo "## Client memory and CPU while playing"
echo
echo "\`shoal-peer play --output null --duration $PLAY_SECS\` of \"$(basename "$SRC")\" from one seeder"
echo "(tracker + \`shoal-peer serve\` on loopback), $(date -u +%F), load average $(cut -d' ' -f1-3 /proc/loadavg)."
echo "Play report: $(cat "$work/play.json")"
echo
echo "| measure | value | target |"
echo "|---|---|---|"
echo "| peak RSS (GNU time max RSS / last VmHWM sample) | $(awk "BEGIN{printf \"%.1f\", $maxrss / 1024}") MiB / $hwm MiB | ≤ 40 MiB |"
echo "| RSS while playing, sampled every $SAMPLE s: peak / mean | $peak_rss MiB / $mean_rss MiB | |"
echo "| CPU, whole run (start-up, 30 s buffer fill, playback) | $total_cpu % of a core ($user s user + $sys s sys in $wall s) | ≤ 2 % |"
echo "| CPU, steady playback (from 10 s to the end, $steady_secs s) | $steady_cpu % of a core | ≤ 2 % |"
