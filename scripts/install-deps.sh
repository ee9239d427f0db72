#!/usr/bin/env bash
# Installs the system packages Shoal's build and tests need on a fresh Debian machine.
# Idempotent: does nothing when everything is present. Needs root (or sudo) to install.
set -euo pipefail

packages=(
  cmake            # the `opus` crate builds libopus 1.6 from source, statically
  pkg-config
  libasound2-dev   # ALSA for `--output device` (cpal)
  singularity-music  # real music (CC-BY-SA 3.0 Ogg Vorbis) the tests import
  opus-tools       # opusenc/opusdec: reference for audio quality checks and benchmarks
  sox              # makes test inputs (FLAC, MP3, WAV, ADPCM) from the real music
  libsox-fmt-all   # sox MP3/Vorbis support
  postgresql       # a throw-away PostgreSQL for the catalog tests (scripts/services.sh)
  python3-venv     # moto_server, the S3-compatible server for the origin-store tests
  curl
  iproute2         # `ip netns`: the NAT tests build hosts from network namespaces
  iptables         # NAT (MASQUERADE, conntrack) inside those namespaces
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "installing: ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
