#!/usr/bin/env bash
# Runs a command with the local stack up, then stops the servers this call started.
#
#   infra/local/with-stack.sh cargo test --all-targets
#
# The command sees the endpoints start.sh exports (AWS_ENDPOINT_URL_KINESIS, ...).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[ $# -gt 0 ] || { echo "usage: $0 COMMAND [ARG...]" >&2; exit 2; }
env_lines=$("$here/start.sh")
eval "$env_lines"
cleanup() {
  # shellcheck disable=SC2086
  [ -z "${PINSTREAM_STACK_STARTED:-}" ] || "$here/stop.sh" $PINSTREAM_STACK_STARTED
}
trap cleanup EXIT
trap 'exit 130' INT TERM
"$@"
