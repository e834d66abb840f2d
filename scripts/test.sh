#!/usr/bin/env bash
# The whole test suite: PostgreSQL up, everything built (the tests load the plugins and start the
# real binary), then every test with nextest. Extra arguments go to `cargo nextest run`.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-postgres.sh
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi
cargo build --workspace
cargo nextest run --workspace --no-fail-fast "$@"
