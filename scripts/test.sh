#!/usr/bin/env bash
# Installs everything the tests need (Debian packages, a virtual environment with
# the project and its test tools) and runs the lint, type, layer and test suites.
# Extra arguments go to pytest, e.g. `scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v gcc >/dev/null 2>&1 || need_apt+=(gcc libc6-dev)
command -v g++ >/dev/null 2>&1 || need_apt+=(g++)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing Debian packages: ${need_apt[*]}; run: sudo apt-get install ${need_apt[*]}" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
# llama.cpp compiles from source the first time (minutes); pip's wheel cache keeps
# the result, so later runs install it in seconds. Only the libraries and tools
# are built: no tests, examples, web UI or TLS.
CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
-DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF" \
  .venv/bin/python -m pip install -q -e '.[llamacpp]'

.venv/bin/ruff format --check gpumeter tests bench
.venv/bin/ruff check gpumeter tests bench
.venv/bin/mypy
.venv/bin/lint-imports
.venv/bin/pytest "$@"
