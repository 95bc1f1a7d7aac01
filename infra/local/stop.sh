#!/usr/bin/env bash
# Stops the local stack servers that start.sh started, and nothing else.
#
#   infra/local/stop.sh                      # every server with a pid file in the state dir
#   infra/local/stop.sh kinesalite dynalite  # only these
#
# Only a pid recorded by start.sh in PINSTREAM_STACK_DIR (default infra/local/run) is
# signalled, and only while its command line is still the one start.sh launched.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
run=${PINSTREAM_STACK_DIR:-$here/run}
services=("$@")
if [ ${#services[@]} -eq 0 ]; then
  for f in "$run"/*.pid; do [ -e "$f" ] && services+=("$(basename "$f" .pid)"); done
fi
for s in "${services[@]}"; do
  f=$run/$s.pid
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)
    case "$cmd" in
      *serve-kinesalite*|*dynalite*|*moto_server*|*main.js*) ;;
      *) echo "local-stack: pid $pid of $s is now '$cmd', not ours; leaving it" >&2; rm -f "$f"; continue ;;
    esac
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    echo "local-stack: stopped $s (pid $pid)" >&2
  fi
  rm -f "$f"
done
# Nothing of ours runs any more: an `auto` port range is picked afresh next time.
compgen -G "$run/*.pid" >/dev/null || rm -f "$run/port-base"
