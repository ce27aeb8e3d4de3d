#!/bin/sh
# Install Debian's chromium (plus a CJK font so the WebUI's Chinese labels render in screenshots) for the
# end-to-end WebUI test. Playwright drives this browser through executable_path; it never downloads its own
# (`playwright install` needs a host CI cannot reach). Safe to run repeatedly: nothing happens when
# /usr/bin/chromium is already there.
set -eu

if [ -x /usr/bin/chromium ]; then
    echo "install-browser: /usr/bin/chromium already present, nothing to do"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

$SUDO apt-get update
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium fonts-noto-cjk
/usr/bin/chromium --version
