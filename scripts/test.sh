#!/usr/bin/env bash
# Shoal's full test command: formatting, lints, the simulator's dependency rule, all tests,
# and that the fuzz targets build. CI (.ci/run) runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "== the simulator builds without libp2p or tokio"
cargo build -p shoal-sim --no-default-features
if cargo tree -p shoal-sim --no-default-features -e normal --prefix none | grep -E '^(libp2p|tokio) '; then
  echo "error: shoal-sim's dependency tree contains libp2p or tokio" >&2
  exit 1
fi

echo "== fuzz targets build"
cargo build --quiet --manifest-path protocol/fuzz/Cargo.toml

echo "== test servers (PostgreSQL, S3-compatible moto)"
# Real servers for the catalog/origin tests; in CI a missing one fails the run rather than
# skipping those tests.
if envs=$(bash scripts/services.sh start); then
  eval "$envs"
  trap 'bash scripts/services.sh stop' EXIT
else
  echo "warning: could not start PostgreSQL/moto; their tests will be skipped" >&2
fi
if [ "${CI:-}" = "true" ]; then export SHOAL_REQUIRE_SERVICES=1; fi

echo "== doc tests"
cargo test --workspace --doc --quiet

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
