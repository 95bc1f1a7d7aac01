#!/usr/bin/env bash
# Starts pinstream's local AWS-compatible stack on loopback and prints its endpoints.
#
#   eval "$(infra/local/start.sh)"                 # all four servers
#   eval "$(infra/local/start.sh kinesalite dynalite)"
#
# Services: kinesalite (Kinesis, fast, resharding), dynalite (DynamoDB), moto (S3),
# kinesis-local (Kinesis with enhanced fan-out, slow). Installs what is missing first
# (npm ci from package-lock.json, a Python venv from requirements.lock), reuses servers that
# are already running from the same state directory, waits until each one answers, then
# prints `export VAR=value` lines on stdout (progress goes to stderr). Re-running is harmless.
#
# Environment: PINSTREAM_STACK_DIR (state: pids, logs, env.sh; default infra/local/run),
# PINSTREAM_STACK_PORT_BASE (default 14566: kinesalite +0, dynalite +1, moto +2,
# kinesis-local +3 plain and +4 TLS; `auto`: a free range picked at random, kept in the
# state directory so that a second start reuses it), PINSTREAM_STACK_TIMEOUT (seconds,
# default 90).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
run=${PINSTREAM_STACK_DIR:-$here/run}
base=${PINSTREAM_STACK_PORT_BASE:-14566}
timeout_s=${PINSTREAM_STACK_TIMEOUT:-90}
all=(kinesalite dynalite moto kinesis-local)
services=("$@")
[ ${#services[@]} -gt 0 ] || services=("${all[@]}")

say() { echo "local-stack: $*" >&2; }
die() { echo "local-stack: error: $*" >&2; exit 1; }

port_of() {
  case "$1" in
    kinesalite) echo $((base + 0)) ;;
    dynalite) echo $((base + 1)) ;;
    moto) echo $((base + 2)) ;;
    kinesis-local) echo $((base + 3)) ;;
    *) die "unknown service '$1' (known: ${all[*]})" ;;
  esac
}

needs_node=0; needs_python=0
for s in "${services[@]}"; do
  case "$s" in
    moto) needs_python=1 ;;
    kinesalite|dynalite|kinesis-local) needs_node=1 ;;
    *) die "unknown service '$s' (known: ${all[*]})" ;;
  esac
done

mkdir -p "$run"
exec 9>"$run/.lock"
flock 9  # one installer/starter at a time per state directory

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# `auto`: the range this state directory already uses, else a random one where nothing
# answers on any of the five ports.
if [ "$base" = auto ]; then
  if [ -f "$run/port-base" ]; then
    base=$(cat "$run/port-base")
  else
    for _ in $(seq 1 50); do
      base=$((20000 + (RANDOM % 8000) * 5))
      free=1
      for off in 0 1 2 3 4; do answers $((base + off)) && free=0; done
      [ $free = 1 ] && break
    done
    [ $free = 1 ] || die "found no free port range for PINSTREAM_STACK_PORT_BASE=auto"
    echo "$base" >"$run/port-base"
  fi
fi
case "$base" in ''|*[!0-9]*) die "PINSTREAM_STACK_PORT_BASE=$base: a port number or auto" ;; esac

if [ $needs_node = 1 ]; then
  command -v node >/dev/null || die "node not found: install Node.js 18 or newer (Debian: apt-get install nodejs npm)"
  command -v npm >/dev/null || die "npm not found: install npm (Debian: apt-get install npm)"
  if ! cmp -s "$here/package-lock.json" "$here/node_modules/.pinstream-lock" 2>/dev/null; then
    say "installing emulators from package-lock.json (npm ci)"
    (cd "$here" && npm ci --no-audit --no-fund --loglevel=error >&2) || die "npm ci failed in $here"
    cp "$here/package-lock.json" "$here/node_modules/.pinstream-lock"
  fi
fi
venv=$here/.venv
if [ $needs_python = 1 ]; then
  command -v python3 >/dev/null || die "python3 not found: install Python 3.9 or newer with venv (Debian: apt-get install python3 python3-venv)"
  if ! cmp -s "$here/requirements.lock" "$venv/.pinstream-lock" 2>/dev/null; then
    say "installing Python packages from requirements.lock into $venv"
    python3 -m venv "$venv" || die "python3 -m venv failed: install the venv module (Debian: apt-get install python3-venv)"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.lock" >&2 || die "pip install failed"
    cp "$here/requirements.lock" "$venv/.pinstream-lock"
  fi
fi

alive() { [ -f "$run/$1.pid" ] && kill -0 "$(cat "$run/$1.pid")" 2>/dev/null; }

start_one() {
  local s=$1 port; port=$(port_of "$s")
  if alive "$s" && answers "$port"; then
    say "$s already running on 127.0.0.1:$port (pid $(cat "$run/$s.pid"))"
    return 0
  fi
  answers "$port" && die "port $port (for $s) is taken by another process: set PINSTREAM_STACK_PORT_BASE to a free range"
  local log=$run/$s.log
  case "$s" in
    kinesalite)
      nohup node "$here/serve-kinesalite.js" "$port" >"$log" 2>&1 9>&- & ;;
    dynalite)
      nohup "$here/node_modules/.bin/dynalite" --host 127.0.0.1 --port "$port" \
        --createTableMs 50 --deleteTableMs 50 --updateTableMs 50 >"$log" 2>&1 9>&- & ;;
    moto)
      nohup "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$log" 2>&1 9>&- & ;;
    kinesis-local)
      # Must start from its own package directory (it reads server.json from the cwd). Its
      # account limit of 50 open shards would be reached after a few test runs on one stack.
      (cd "$here/node_modules/kinesis-local" && KINESIS_MOCK_PLAIN_PORT=$port KINESIS_MOCK_TLS_PORT=$((port + 1)) SHARD_LIMIT=100000 \
        exec nohup node main.js >"$log" 2>&1 9>&-) & ;;
  esac
  echo $! >"$run/$s.pid"
  echo "$s" >>"$run/started-now"
}

: >"$run/started-now"
for s in "${services[@]}"; do start_one "$s"; done

deadline=$((SECONDS + timeout_s))
for s in "${services[@]}"; do
  port=$(port_of "$s")
  until answers "$port"; do
    alive "$s" || { tail -n 20 "$run/$s.log" >&2; die "$s exited during start (log: $run/$s.log)"; }
    [ $SECONDS -lt $deadline ] || die "$s did not answer on 127.0.0.1:$port within ${timeout_s}s (log: $run/$s.log)"
    sleep 0.2
  done
  say "$s ready on 127.0.0.1:$port"
done

{
  echo "export AWS_REGION=\${AWS_REGION:-us-east-1}"
  echo "export AWS_DEFAULT_REGION=\${AWS_DEFAULT_REGION:-\${AWS_REGION:-us-east-1}}"
  echo "export AWS_ACCESS_KEY_ID=\${AWS_ACCESS_KEY_ID:-test}"
  echo "export AWS_SECRET_ACCESS_KEY=\${AWS_SECRET_ACCESS_KEY:-test}"
  for s in "${services[@]}"; do
    port=$(port_of "$s")
    case "$s" in
      kinesalite) echo "export AWS_ENDPOINT_URL_KINESIS=http://127.0.0.1:$port" ;;
      dynalite) echo "export AWS_ENDPOINT_URL_DYNAMODB=http://127.0.0.1:$port" ;;
      moto) echo "export AWS_ENDPOINT_URL_S3=http://127.0.0.1:$port"
            echo "export PINSTREAM_MOTO_ENDPOINT=http://127.0.0.1:$port" ;;
      kinesis-local) echo "export PINSTREAM_KINESIS_FANOUT_ENDPOINT=http://127.0.0.1:$port" ;;
    esac
  done
  echo "export PINSTREAM_STACK_STARTED=\"$(tr '\n' ' ' <"$run/started-now" | sed 's/ $//')\""
  echo "export PINSTREAM_STACK_DIR=$run"
} | tee "$run/env.sh"
