#!/usr/bin/env bash
# Install headless Chromium (Debian's `chromium` package) for tests/test_browser.py, which opens a
# saved report in a real browser with networking disabled. Does nothing when it is already there.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install_browser.sh: /usr/bin/chromium is missing and installing it needs root (apt-get)." >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium >/dev/null
