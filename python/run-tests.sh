#!/usr/bin/env bash
# Runs the Python package's tests against the real ringcast server.
#
#   python/run-tests.sh [pytest args...]
#
# 1. Creates a virtual environment (default python/.venv; set RINGCAST_PY_VENV
#    to put it elsewhere, PYTHON to pick the interpreter, default python3).
# 2. Installs pytest, zstandard (optional: without it the zstd tests skip),
#    PyJWT with cryptography (the token tests; skipped without them)
#    and the package itself with `pip install ./python`: a regular,
#    non-editable install, so the tests prove the install works.
# 3. Takes the server binary from RINGCAST_BIN, or builds
#    target/release/ringcast with cargo when it is missing.
# 4. Runs `pytest -q python/tests` and exits with pytest's status.
set -euo pipefail

PY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$PY_DIR/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="${RINGCAST_PY_VENV:-$PY_DIR/.venv}"

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "run-tests.sh: $PYTHON not found; install Python 3.9 or newer (Debian: apt-get install python3)" >&2
    exit 2
fi

# python3 -m venv needs the venv and ensurepip modules; Debian ships them
# apart, in python3-venv.
if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    echo "run-tests.sh: $PYTHON has no working venv module." >&2
    echo "  On Debian/Ubuntu install it with: apt-get install -y python3-venv" >&2
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "run-tests.sh: running as root with apt: installing python3-venv" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y python3-venv || { apt-get update && apt-get install -y python3-venv; }
    else
        exit 2
    fi
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
VPY="$VENV/bin/python"

echo "== installing pytest and ./python into $VENV"
"$VPY" -m pip install --quiet --disable-pip-version-check --upgrade pytest
# zstandard is optional for users (the zstd codec), but the tests should
# cover it; without it (no network, no wheel) the zstd tests are skipped.
if ! "$VPY" -m pip install --quiet --disable-pip-version-check 'zstandard>=0.22'; then
    echo "run-tests.sh: could not install zstandard; the zstd tests will be skipped" >&2
fi
# PyJWT with cryptography signs the tokens of test_tokens.py (HS256, RS256,
# ES256, EdDSA): tokens made by a library we did not write. Without them
# (no network, no wheel) those tests are skipped, and listed as skipped.
if ! "$VPY" -m pip install --quiet --disable-pip-version-check 'pyjwt[crypto]>=2.8'; then
    echo "run-tests.sh: could not install PyJWT/cryptography; the token tests will be skipped" >&2
fi
# --force-reinstall: the version does not change between commits, and the
# tests must run against the tree as it is now.
(cd "$REPO" && "$VPY" -m pip install --quiet --disable-pip-version-check \
    --force-reinstall --no-deps ./python)
"$VPY" -c 'import ringcast, sys; print("ringcast", ringcast.__version__, "from", ringcast.__file__, "on Python", sys.version.split()[0])'
"$VPY" -c 'from ringcast import compression as c; print("compression codecs available:", ", ".join(c.available_codecs()))'

if [ -n "${RINGCAST_BIN:-}" ]; then
    echo "== server binary: RINGCAST_BIN=$RINGCAST_BIN"
elif [ -x "$REPO/target/release/ringcast" ]; then
    echo "== server binary: $REPO/target/release/ringcast"
else
    echo "== building the server: cargo build --release --bin ringcast"
    (cd "$REPO" && cargo build --release --bin ringcast)
fi

echo "== pytest -q python/tests"
cd "$REPO"
set +e
"$VPY" -m pytest -q -p no:cacheprovider python/tests "$@"
status=$?
set -e
exit "$status"
