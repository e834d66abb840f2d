#!/usr/bin/env bash
# The official client SDKs the adapter tests drive, pinned: the `openai` and `anthropic` Python
# packages in a virtualenv and the `openai` Node package, both under $KARTA_SDK_CACHE (~/.cache/karta-sdk).
# Prints the two paths the tests read (KARTA_TEST_PYTHON, KARTA_TEST_NODE_PATH) as `export` lines.
set -euo pipefail

OPENAI_PY_VERSION=3.63.0
ANTHROPIC_PY_VERSION=2.17.0
# The newest release line that still runs on Node 20 (7.x needs Node 22).
OPENAI_NODE_VERSION=6.30.1

cache="${KARTA_SDK_CACHE:-$HOME/.cache/karta-sdk}"
mkdir -p "$cache"
py="$cache/venv/bin/python"
if ! { [ -x "$py" ] && "$py" -c "import openai, anthropic, sys; sys.exit(openai.__version__ != '$OPENAI_PY_VERSION' or anthropic.__version__ != '$ANTHROPIC_PY_VERSION')" 2>/dev/null; }; then
  echo "ensure-sdk-clients: installing openai==$OPENAI_PY_VERSION and anthropic==$ANTHROPIC_PY_VERSION (Python) into $cache/venv" >&2
  python3 -m venv "$cache/venv" >&2
  "$cache/venv/bin/pip" install --quiet "openai==$OPENAI_PY_VERSION" "anthropic==$ANTHROPIC_PY_VERSION" >&2
fi
node_dir="$cache/node"
if ! { [ -f "$node_dir/node_modules/openai/package.json" ] \
  && grep -q "\"version\": \"$OPENAI_NODE_VERSION\"" "$node_dir/node_modules/openai/package.json"; }; then
  echo "ensure-sdk-clients: installing openai@$OPENAI_NODE_VERSION (Node) into $node_dir" >&2
  npm install --no-audit --no-fund --prefix "$node_dir" "openai@$OPENAI_NODE_VERSION" >&2
fi
echo "export KARTA_TEST_PYTHON=$py"
echo "export KARTA_TEST_NODE_PATH=$node_dir/node_modules"
