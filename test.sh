#!/usr/bin/env bash
# Runs the whole lb-agent test suite: unit tests, and integration tests against a
# real HAProxy 2.6, a real BIRD 2 and network namespaces. Installs what it needs
# (Debian 12, as root). Tests that need root or a missing tool skip loudly.
set -euo pipefail
cd "$(dirname "$0")"

# etcd: the etcd source's tests start their own members; protoc: etcd-client
# compiles etcd's protobuf definitions at build time, which import protobuf's
# well-known types (google/protobuf/*.proto, in libprotobuf-dev: only a
# recommendation of protobuf-compiler, so not there with --no-install-recommends).
# rsyslog: the packaged drop-in is run by tests/haproxy_observability.rs.
# python3 -m venv and curl: the benchmark's anycast-healthchecker baseline
# (tests/bench_quick.rs runs the harness).
scripts/ensure-packages.sh haproxy:haproxy bird:bird2 ip:iproute2 socat:socat \
    openssl:openssl setpriv:util-linux curl:curl python3:python3 rsyslogd:rsyslog \
    etcd:etcd-server etcdctl:etcd-client protoc:protobuf-compiler libprotobuf-dev
python3 -c 'import ensurepip, venv' 2>/dev/null || scripts/ensure-packages.sh python3-venv
# Debian's Prometheus client parses both metrics formats (tests/status_socket.rs).
/usr/bin/python3 -c 'import prometheus_client' 2>/dev/null || scripts/ensure-packages.sh python3-prometheus-client
# A distro-started HAProxy or BIRD is not ours; the tests start their own.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl stop haproxy.service bird.service 2>/dev/null || true
fi

# Every skip appends a line to LB_AGENT_SKIP_LOG (docs/testing.md); the list
# is printed at the end. LB_AGENT_NO_SKIP=1 (.ci/run) turns a skip into a
# failure, except the allow-listed host-property skips.
own_log=""
if [ -z "${LB_AGENT_SKIP_LOG:-}" ]; then
    own_log=$(mktemp)
    export LB_AGENT_SKIP_LOG="$own_log"
fi
echo "== cargo test"
rc=0
cargo test --locked --no-fail-fast "$@" || rc=$?
if [ -s "$LB_AGENT_SKIP_LOG" ]; then
    echo "== $(wc -l <"$LB_AGENT_SKIP_LOG") skip(s) (test, reason, kind):"
    cat "$LB_AGENT_SKIP_LOG"
else
    echo "== no test skipped"
fi
[ -n "$own_log" ] && rm -f "$own_log"
exit "$rc"
