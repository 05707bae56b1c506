#!/usr/bin/env bash
# Idempotent set-up for the browser labeler's end-to-end test (tests/test_browser_labeler.py): Debian's
# headless Chromium and its matching chromedriver, plus the `selenium` Python package. Safe to run again;
# it only installs what is missing and says what it did.
#
#     bash scripts/install_browser.sh                  # selenium into python3
#     PY=.venv/bin/python bash scripts/install_browser.sh
#
# Debian packages: chromium (/usr/bin/chromium) and chromium-driver (/usr/bin/chromedriver), installed
# with apt-get (needs root; `apt-get update` runs only when something is missing). The labeler itself
# needs none of this: it is standard library only.
set -euo pipefail
PY="${PY:-python3}"

missing=()
for pkg in chromium chromium-driver; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "[install_browser] apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "[install_browser] chromium and chromium-driver already installed"
fi

if ! "$PY" -c "import selenium" >/dev/null 2>&1; then
  echo "[install_browser] pip install selenium into $PY (the version of constraints.txt)"
  "$PY" -m pip install --disable-pip-version-check -q -c "$(dirname "${BASH_SOURCE[0]}")/../constraints.txt" selenium
else
  echo "[install_browser] selenium already installed in $PY"
fi

echo "[install_browser] $(/usr/bin/chromium --version 2>/dev/null || echo 'chromium: not found')"
echo "[install_browser] $(/usr/bin/chromedriver --version 2>/dev/null || echo 'chromedriver: not found')"
echo "[install_browser] selenium $("$PY" -c 'import selenium; print(selenium.__version__)')"
