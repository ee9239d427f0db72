#!/usr/bin/env bash
# The main job, end to end on this machine: `shoal-peer demo` starts a tracker, imports real
# music, starts three seeding peers and a listener on loopback and plays a track on the
# listener to target/demo.wav; its bytes come mostly from the other peers.
# Usage: scripts/demo.sh [MUSIC_FILE_OR_DIR...]   (default: Debian's singularity-music)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release -q -p shoal-tracker -p shoal-peer
bin=${CARGO_TARGET_DIR:-target}/release
out=${SHOAL_OUT:-target/demo.wav}
mkdir -p "$(dirname "$out")"
"$bin/shoal-peer" demo --output "$out" --json "$@"
echo "== wrote $out ($(du -h "$out" | cut -f1)); play it with any audio player"
