#!/usr/bin/env bash
# The main job, end to end on this machine: import real music into a local origin directory
# (`shoal-tracker import`), then play a track from it to a WAV file (`shoal-peer play`).
# Usage: scripts/demo.sh [MUSIC_FILE_OR_DIR...]   (default: Debian's singularity-music)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release -q -p shoal-tracker -p shoal-peer
bin=${CARGO_TARGET_DIR:-target}/release

data=${SHOAL_DATA:-target/demo-data}
out=${SHOAL_OUT:-target/demo.wav}
if [ $# -eq 0 ]; then set -- /usr/share/games/singularity/music; fi
mkdir -p target

echo "== importing $* into $data"
"$bin/shoal-tracker" import --data "$data" "$@" | tee target/demo-import.txt || true
id=$(grep -Eo '^[0-9a-f]{64}' target/demo-import.txt | head -1)
if [ -z "$id" ]; then echo "nothing was imported" >&2; exit 1; fi

echo "== playing $id to $out"
"$bin/shoal-peer" play --data "$data" "$id" --output "$out" --json
echo "== wrote $out ($(du -h "$out" | cut -f1)); play it with any audio player, or: shoal-peer play --data $data $id --output device"
