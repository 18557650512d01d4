#!/usr/bin/env bash
# The SPEC §8 benchmark harness: installs what it needs (Debian 12, as root),
# builds lb-agent in release mode and runs lb-agent-bench, which prints one
# table (lb-agent next to the naive way, measured in the same run).
#   ./bench.sh                              full run (about 10 minutes)
#   ./bench.sh --out docs/benchmarks.md     ... and write the table there
#   ./bench.sh --quick                      small sizes, well under a minute
#   ./bench.sh --only fleet [--watchers N]  1,000 etcd watchers vs 1,000 HTTP long-pollers
#                                           (docs/fleet.md; about 5 minutes, ~10 GB RAM)
set -euo pipefail
cd "$(dirname "$0")"

scripts/ensure-packages.sh haproxy:haproxy bird:bird2 ip:iproute2 socat:socat curl:curl python3:python3
python3 -c 'import ensurepip, venv' 2>/dev/null || scripts/ensure-packages.sh python3-venv
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl stop haproxy.service bird.service 2>/dev/null || true
fi
echo "== cargo build --release"
cargo build --release --locked --bins
exec target/release/lb-agent-bench "$@"
