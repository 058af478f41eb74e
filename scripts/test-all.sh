#!/usr/bin/env bash
# Set up everything StreamFlow's tests need and run the whole suite:
# virtual environment, dependencies, Kafka, Jaeger, PostgreSQL, ruff, mypy --strict, the
# import-layering contracts (import-linter), pytest.
# Safe to run again: every step reuses what an earlier run installed, built or started.
# Downloads and builds are cached under ~/.cache/streamflow.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${STREAMFLOW_CACHE:-$HOME/.cache/streamflow}"
WHEELS="$CACHE/wheels"  # pip's own HTTP cache is bypassed by some registry mirrors: keep wheels
export PIP_DISABLE_PIP_VERSION_CHECK=1
PY="${PYTHON:-python3}"
VENV=.venv

declare -a PHASES=()
phase() {  # phase NAME COMMAND...: run it, time it, stop on failure
  local name=$1; shift
  local start=$SECONDS
  echo "==> $name"
  if "$@"; then
    PHASES+=("$(printf '%-10s %4ss' "$name" $((SECONDS - start)))")
    echo "<== $name: $((SECONDS - start))s"
  else
    local rc=$?
    echo "<== $name FAILED after $((SECONDS - start))s (exit $rc)" >&2
    exit "$rc"
  fi
}
report() {
  echo "phase timings:"
  for p in "${PHASES[@]}"; do echo "  $p"; done
}
trap report EXIT

make_venv() {
  "$PY" -c 'import sys; assert sys.version_info >= (3, 11), "StreamFlow needs Python 3.11+"'
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV" || {
      echo "python3 -m venv failed; on Debian/Ubuntu: apt-get install python3-venv" >&2
      return 1
    }
  fi
}
install_deps() {
  mkdir -p "$WHEELS"
  if "$VENV/bin/pip" install -q --no-index --find-links "$WHEELS" -e '.[dev]' 2>/dev/null; then
    return 0  # everything came from the local wheelhouse
  fi
  "$VENV/bin/pip" install -q --find-links "$WHEELS" -e '.[dev]'
  "$VENV/bin/pip" freeze --exclude-editable | grep -v -e '^-e ' -e ' @ ' > "$CACHE/wheels.txt"
  printf "hatchling\neditables\n" >> "$CACHE/wheels.txt"  # build backend, for offline installs
  "$VENV/bin/pip" download -q -d "$WHEELS" --find-links "$WHEELS" -r "$CACHE/wheels.txt"
}
services_up() { "$VENV/bin/streamflow" services up; }
lint() { "$VENV/bin/ruff" check .; }
types() { "$VENV/bin/mypy"; }
layers() { "$VENV/bin/lint-imports"; }
tests() {
  local rc=0
  "$VENV/bin/python" -m pytest -rs -q -p no:cacheprovider "$@" || rc=$?
  if [ "$rc" -eq 5 ]; then echo "pytest collected no tests" >&2; return 1; fi
  return "$rc"
}
# The three-broker phase: replication and coordinator kills (tests/cluster) on a local
# three-node KRaft cluster. The single broker is stopped meanwhile (three more JVMs beside it
# would slow both) and started again after, so a developer's machine is left as it was. Run
# only for the whole suite: arguments (a subset of the tests) skip it. However the phase ends
# (a failure, a timeout's SIGTERM, Ctrl-C), the cluster is stopped and the single broker
# started again: the restore runs in the subshell's EXIT trap, and keeps the exit status.
cluster() (
  restore() {
    local rc=$?
    trap - EXIT INT TERM
    "$VENV/bin/streamflow" services down --brokers 3 kafka || { [ "$rc" -ne 0 ] || rc=1; }
    "$VENV/bin/streamflow" services up kafka || { [ "$rc" -ne 0 ] || rc=1; }
    exit "$rc"
  }
  trap restore EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  "$VENV/bin/streamflow" services down kafka || exit  # (set -e is off inside `phase`'s if)
  "$VENV/bin/streamflow" services up --brokers 3 kafka || exit
  tests tests/cluster
)

phase venv make_venv
phase deps install_deps
phase services services_up
phase ruff lint
phase mypy types
phase layers layers
phase tests tests "$@"
if [ "$#" -eq 0 ]; then phase cluster cluster; fi
