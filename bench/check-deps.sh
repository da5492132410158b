#!/usr/bin/env bash
# Checks that bench-client links nothing of the server's runtime: it shares corecast's
# wire crate (crates/wire) and must not pull in the server, its executors, its cluster
# bus or its auth. Dev-dependencies (the tests start a real server) are not counted.
# Also checks that bench-client's load engine does not import its report code
# (bench-client/src/report/: summary.json, .hgrm, SETUP.md, the SVG).
# Usage: bench/check-deps.sh   (exit 1 and what was found when a check fails)
set -euo pipefail
cd "$(dirname "$0")/.."

forbidden='^(corecast|glommio|tokio|async-nats|argon2|jsonwebtoken) '
tree=$(cargo tree -p bench-client -e normal --prefix none)
found=$(grep -E "$forbidden" <<<"$tree" | sort -u || true)
if [ -n "$found" ]; then
  echo "bench-client depends on server crates (cargo tree -p bench-client -e normal -i <name> shows why):" >&2
  echo "$found" >&2
  exit 1
fi
echo "bench-client: no corecast, glommio, tokio, async-nats, argon2 or jsonwebtoken among its normal dependencies"

# The load engine: every module that measures; only run/suite/compare/main present results.
engine="coord worker engine conn epoch timer plan schedule payload scan track record sys cli scenario error"
files=$(for m in $engine; do echo "bench-client/src/$m.rs"; done)
# shellcheck disable=SC2086
if grep -nE '(crate|bench_client)::(report|plot)\b' $files; then
  echo "bench-client's engine imports report code (above): report may import the engine, not the reverse" >&2
  exit 1
fi
echo "bench-client: the load engine imports no report code"
