#!/usr/bin/env bash
# Audio benchmarks (issue "Real audio in and out"), all measured in one run on real music:
#  - import speed: `shoal-tracker import` vs Debian's `opusenc --bitrate 128` on the same WAV;
#  - decode speed: `shoal-peer play --output out.wav` vs `opusdec` on the same track;
#  - peak memory (max RSS) of importing one 5-minute track.
# Prints a Markdown table for BENCHMARKS.md. Needs: sox, opus-tools, GNU time, singularity-music.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
command -v /usr/bin/time >/dev/null || { echo "needs GNU time: apt-get install time" >&2; exit 1; }

REPS=${REPS:-5}
SRC=${SRC:-/usr/share/games/singularity/music/A New Journey.ogg}
cargo build --release -q -p shoal-tracker -p shoal-peer
BIN=target/release
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

sox "$SRC" "$work/src.wav"
secs=$(soxi -D "$work/src.wav")

# Best of $REPS wall-clock seconds of a command.
best() {
  local best=""
  for _ in $(seq "$REPS"); do
    local t
    t=$( { /usr/bin/time -f "%e" "$@" >/dev/null; } 2>&1 | tail -1 )
    if [ -z "$best" ] || awk "BEGIN{exit !($t < $best)}"; then best=$t; fi
  done
  echo "$best"
}

import_once() { rm -rf "$work/data"; "$BIN/shoal-tracker" import --data "$work/data" "$work/src.wav"; }
export -f import_once; export BIN work

opusenc_s=$(best opusenc --quiet --bitrate 128 "$work/src.wav" "$work/ref.opus")
import_s=$(best bash -c import_once)
import_once >/dev/null
id=$(ls "$work/data/manifests/"*/ | head -1)
opusdec_s=$(best opusdec --quiet "$work/ref.opus" "$work/ref.wav")
play_s=$(best "$BIN/shoal-peer" play --data "$work/data" "$id" --output "$work/out.wav")
rm -rf "$work/data"
rss_kib=$( { /usr/bin/time -f "%M" "$BIN/shoal-tracker" import --data "$work/data2" "$work/src.wav" >/dev/null; } 2>&1 | tail -1 )

ratio() { awk "BEGIN{printf \"%.2f\", $1 / $2}"; }
rt() { awk "BEGIN{printf \"%.0f\", $secs / $1}"; }
echo "Source: $(basename "$SRC"), ${secs} s, decoded to WAV by sox; best of $REPS runs; $(nproc) CPUs."
echo
echo "| task | reference | Shoal | Shoal speed ÷ reference speed | target |"
echo "|---|---|---|---|---|"
echo "| encode 128 kbit/s | opusenc ${opusenc_s} s ($(rt "$opusenc_s")× real time) | import ${import_s} s ($(rt "$import_s")× real time) | $(ratio "$opusenc_s" "$import_s") | ≥ 0.8 |"
echo "| decode to WAV | opusdec ${opusdec_s} s ($(rt "$opusdec_s")× real time) | play --output out.wav ${play_s} s ($(rt "$play_s")× real time) | $(ratio "$opusdec_s" "$play_s") | ≥ 1.0 |"
echo "| import peak memory (max RSS) | | $(awk "BEGIN{printf \"%.1f\", $rss_kib / 1024}") MiB | | ≤ 64 MiB |"
