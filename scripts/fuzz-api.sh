#!/usr/bin/env bash
# Property-based fuzzing of the HTTP API from its own OpenAPI document (schemathesis):
# thousands of generated requests; fails on any 5xx, on an error that is not
# problem+json, or on a response that does not match the document.
# Usage: scripts/fuzz-api.sh PATH/TO/santa [EXAMPLES_PER_OPERATION]
set -euo pipefail
santa=${1:?path to the santa binary}
examples=${2:-100}
venv=${SANTA_FUZZ_VENV:-/var/cache/santa-workshop/venv}

if [ ! -x "$venv/bin/schemathesis" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet 'schemathesis==4.32.5'
fi

dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$santa" serve --addr "127.0.0.1:$port" --data-dir "$dir" 2>"$dir/server.log" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$dir"' EXIT

for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
  sleep 0.1
done
curl -sf -X POST "http://127.0.0.1:$port/admin/seed" >/dev/null

"$venv/bin/schemathesis" run "http://127.0.0.1:$port/openapi.json" \
  --checks not_a_server_error,content_type_conformance,response_schema_conformance,status_code_conformance \
  --max-examples "$examples" --generation-deterministic --request-timeout 10

if grep -q 'panicked' "$dir/server.log"; then
  echo "the server panicked during fuzzing:" >&2
  grep -A5 'panicked' "$dir/server.log" >&2
  exit 1
fi
