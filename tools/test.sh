#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian machine, then run the whole suite.
#   - Debian: QGIS (the real client our outputs are checked against; `qgis` brings qgis_process,
#     which runs the plugin's Processing algorithms headless: 6 packages, 34 MB download, 190 MB
#     installed on top of python3-qgis) and GDAL tools;
#   - a virtualenv in .venv with vitp-geo and its test extras (pinned in pyproject.toml);
#   - pytest over tests/.
# Usage: bash tools/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
  local pkgs=(python3-qgis qgis-providers qgis gdal-bin)
  if /usr/bin/python3 -c "import qgis.core" >/dev/null 2>&1 && command -v qgis_process >/dev/null 2>&1; then
    echo "[test.sh] QGIS already installed"
    return
  fi
  local sudo=""
  if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
      echo "[test.sh] not root and no sudo: skipping Debian packages (QGIS client tests will skip)"; return; fi
  fi
  echo "[test.sh] installing Debian packages: ${pkgs[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
}

if command -v apt-get >/dev/null 2>&1; then apt_install; fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  echo "[test.sh] creating .venv with $PY"
  "$PY" -m venv .venv
fi
echo "[test.sh] installing vitp-geo[test,cluster] into .venv"
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test,cluster]"  # cluster: Ray, for the infer-catalog --engine ray tests

echo "[test.sh] running the test suite"
exec .venv/bin/python -m pytest -q "$@"
