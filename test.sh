#!/usr/bin/env bash
# Runs the whole lb-agent test suite: unit tests, and integration tests against a
# real HAProxy 2.6, a real BIRD 2 and network namespaces. Installs what it needs
# (Debian 12, as root). Tests that need root or a missing tool skip loudly.
set -euo pipefail
cd "$(dirname "$0")"

need=()
for pair in haproxy:haproxy bird:bird2 ip:iproute2 socat:socat openssl:openssl setpriv:util-linux; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%:*}" ] || need+=("${pair##*:}")
done
if [ "${#need[@]}" -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then
        echo "== installing ${need[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    else
        echo "!!! missing ${need[*]} and not root: the tests that need them will be SKIPPED" >&2
    fi
fi
# A distro-started HAProxy or BIRD is not ours; the tests start their own.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl stop haproxy.service bird.service 2>/dev/null || true
fi

echo "== cargo test"
cargo test --locked --no-fail-fast "$@"
