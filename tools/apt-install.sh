#!/usr/bin/env bash
# Install the Debian packages that build and test flowprobe, as `make deps`
# does on a fresh Debian 12 machine.
#
#   tools/apt-install.sh PACKAGE...
#
# - Only packages not yet installed are installed, without Recommends.
# - No daemon starts during the install: a policy-rc.d that refuses every
#   start is in place while apt runs (unless the machine has its own), and is
#   removed afterwards, also on failure.
# - The services of test-only packages (nfdump's nfcapd, softflowd, pmacct's
#   collectors) are left disabled, so a booted machine does not start them:
#   the tests start their own instances on loopback.
set -euo pipefail

TEST_DAEMON_PACKAGES=(nfdump softflowd pmacct)

sudo=""
[ "$(id -u)" -eq 0 ] || sudo=sudo

missing=()
for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing+=("$pkg")
done
[ ${#missing[@]} -gt 0 ] || exit 0

policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    trap '$sudo rm -f "$policy"' EXIT
    printf '#!/bin/sh\n# flowprobe tools/apt-install.sh: start no service during the install\nexit 101\n' \
        | $sudo tee "$policy" >/dev/null
    $sudo chmod 0755 "$policy"
fi

echo "apt-get install --no-install-recommends: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

for pkg in "${TEST_DAEMON_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || continue
    for unit in $(dpkg -L "$pkg" | sed -n 's#^/lib/systemd/system/\([^@]*\.service\)$#\1#p'); do
        $sudo systemctl disable --quiet "$unit" 2>/dev/null || true
        $sudo systemctl stop "$unit" 2>/dev/null || true
    done
done
