#!/usr/bin/env bash
# The whole test suite: PostgreSQL up, the pinned harness CLIs installed, everything built (the
# tests load the plugins and start the real binary), then every test with nextest. The harness
# tests run inside a network namespace with only loopback, where the machine allows it, so
# nothing they start can reach the outside. Extra arguments go to `cargo nextest run`.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-postgres.sh
scripts/ensure-bubblewrap.sh
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi

# The Claude Code CLI, pinned to the version the driver is built against (one source of truth).
claude_version=$(sed -n 's/^pub const CLAUDE_CODE_VERSION: &str = "\(.*\)";/\1/p' platform/src/harness.rs)
cache="${KARTA_HARNESS_CACHE:-$HOME/.cache/karta-harnesses}"
claude="$cache/claude-code/node_modules/.bin/claude"
if ! { [ -x "$claude" ] && "$claude" --version 2>/dev/null | grep -q "^$claude_version"; }; then
  echo "test.sh: installing @anthropic-ai/claude-code@$claude_version into $cache/claude-code"
  npm install --no-audit --no-fund --prefix "$cache/claude-code" "@anthropic-ai/claude-code@$claude_version" >/dev/null
fi
export KARTA_TEST_CLAUDE_BIN="$claude"

opencode_version=$(sed -n 's/^pub const OPENCODE_VERSION: &str = "\(.*\)";/\1/p' platform/src/harness.rs)
opencode="$cache/opencode/node_modules/.bin/opencode"
if ! { [ -x "$opencode" ] && [ "$("$opencode" --version 2>/dev/null)" = "$opencode_version" ]; }; then
  echo "test.sh: installing opencode-ai@$opencode_version into $cache/opencode"
  npm install --no-audit --no-fund --prefix "$cache/opencode" "opencode-ai@$opencode_version" >/dev/null
fi
export KARTA_TEST_OPENCODE_BIN="$opencode"

# The Claude Code ACP adapter, for the ACP driver's interop test (pinned).
claude_acp_version=0.16.2
claude_acp="$cache/claude-code-acp/node_modules/.bin/claude-code-acp"
if ! grep -qs "\"version\": \"$claude_acp_version\"" "$cache/claude-code-acp/node_modules/@zed-industries/claude-code-acp/package.json"; then
  echo "test.sh: installing @zed-industries/claude-code-acp@$claude_acp_version into $cache/claude-code-acp"
  npm install --no-audit --no-fund --prefix "$cache/claude-code-acp" "@zed-industries/claude-code-acp@$claude_acp_version" >/dev/null
fi
export KARTA_TEST_CLAUDE_CODE_ACP_BIN="$claude_acp"

# The official client SDKs the adapter tests drive (pinned).
eval "$(scripts/ensure-sdk-clients.sh)"

cargo build --workspace
# A driver plugin built against the frozen karta-driver-api 1.0.0: every host must still load it.
cargo build --locked --manifest-path tests/fixtures/abi-1.0-plugin/Cargo.toml --target-dir target

status=0
# The ABI crate against its frozen 1.0.0 release: a change that would break a plugin fails here.
semver_version=0.51.0
if ! cargo semver-checks --version 2>/dev/null | grep -q " $semver_version"; then
  echo "test.sh: installing cargo-semver-checks $semver_version"
  cargo install cargo-semver-checks --locked --version "$semver_version"
fi
cargo semver-checks check-release --manifest-path driver-api/Cargo.toml \
  --baseline-root tests/fixtures/driver-api-1.0 || status=$?

harness='binary(claude_code) | binary(opencode) | binary(sandbox) | binary(conformance) | binary(acp)'
cargo nextest run --workspace --no-fail-fast -E "not ($harness)" "$@" || status=$?

harness_tests=(cargo nextest run --offline --no-fail-fast -p karta-e2e --test claude_code --test opencode --test sandbox --test conformance --test acp "$@")
if unshare -n true 2>/dev/null && command -v ip >/dev/null; then
  echo "test.sh: harness tests inside a loopback-only network namespace"
  unshare -n bash -c 'ip link set lo up && exec "$@"' harness "${harness_tests[@]}" || status=$?
else
  echo "test.sh: unshare -n unavailable; harness tests run on the host network (loopback only by configuration)"
  "${harness_tests[@]}" || status=$?
fi
exit "$status"
