#!/usr/bin/env bash
# Checks that bench-client links nothing of the server's runtime: it shares corecast's
# wire crate (crates/wire) and must not pull in the server, its executors, its cluster
# bus or its auth. Dev-dependencies (the tests start a real server) are not counted.
# Usage: bench/check-deps.sh   (exit 1 and the offending crates when one is found)
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
