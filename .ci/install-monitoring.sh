#!/bin/sh
# Install promtool/amtool from Debian's prometheus and prometheus-alertmanager packages for the offline
# monitoring tests. The packages ship systemd units that would start daemons; a CI box or container must
# not end up with a Prometheus listening on :9090, so service starts are denied via policy-rc.d while
# the packages are configured. Safe to run repeatedly: it does nothing when both tools are on PATH.
set -eu

if command -v promtool >/dev/null 2>&1 && command -v amtool >/dev/null 2>&1; then
    echo "install-monitoring: promtool and amtool already present, nothing to do"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

POLICY=/usr/sbin/policy-rc.d
BACKUP="$POLICY.install-monitoring.bak"
# An existing policy (Docker images ship one) may allow starts, so ours replaces it for the duration of
# the install and the original comes back afterwards.
if [ -e "$POLICY" ]; then
    $SUDO mv "$POLICY" "$BACKUP"
fi

restore_policy() {
    $SUDO rm -f "$POLICY"
    if [ -e "$BACKUP" ]; then
        $SUDO mv "$BACKUP" "$POLICY"
    fi
}
trap restore_policy EXIT
trap 'exit 1' INT TERM

# Exit code 101 means "action forbidden" to invoke-rc.d and deb-systemd-invoke.
printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
$SUDO chmod 0755 "$POLICY"

$SUDO apt-get update
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    prometheus prometheus-alertmanager

# With systemd running as PID 1 the policy file is bypassed by deb-systemd-invoke on some releases;
# stop anything that started anyway so the host stays clean.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now prometheus prometheus-alertmanager prometheus-node-exporter \
        >/dev/null 2>&1 || true
fi

promtool --version
amtool --version
