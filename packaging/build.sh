#!/usr/bin/env bash
# Builds the release binary, the man page and completions, then the .deb and
# the .rpm (into target/debian/ and target/generate-rpm/).
# Needs cargo-deb and cargo-generate-rpm (`cargo install --locked cargo-deb@3.8.0
# cargo-generate-rpm@0.21.1`), and for the RHEL 8 compatible RPM binary
# cargo-zigbuild (`cargo install --locked cargo-zigbuild@0.24.1`) with the ziglang
# wheel (`pip install ziglang`); .ci/run installs them.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
bin=target/release/lb-agent
mkdir -p target/assets
"$bin" man | gzip -9n > target/assets/lb-agent.8.gz
"$bin" completions bash > target/assets/lb-agent.bash
"$bin" completions zsh > target/assets/_lb-agent
"$bin" completions fish > target/assets/lb-agent.fish
cargo deb --no-build --locked

# The RPM must run on RHEL 8 (glibc 2.28) and 9: link its binary against glibc
# 2.28's symbol versions with cargo-zigbuild and the ziglang wheel (both from the
# package registries), and prove it from the binary's dynamic symbols.
rpm_target=x86_64-unknown-linux-gnu
if command -v cargo-zigbuild >/dev/null 2>&1 && python3 -m ziglang version >/dev/null 2>&1; then
    cargo zigbuild --release --locked --bin lb-agent --target "$rpm_target.2.28"
    rpmbin="target/$rpm_target/release/lb-agent"
    need=$(objdump -T "$rpmbin" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
    echo "RPM binary: highest glibc symbol version $need"
    if [ "$(printf '%s\n' GLIBC_2.28 "$need" | sort -V | tail -1)" != GLIBC_2.28 ]; then
        echo "the RPM binary needs $need, newer than RHEL 8's glibc 2.28" >&2
        exit 1
    fi
    "$rpmbin" --version
    cargo generate-rpm --target "$rpm_target"
    rpm_out="target/$rpm_target/generate-rpm"
else
    echo "!!! cargo-zigbuild or ziglang missing: the RPM carries the Debian-built binary (glibc 2.34: RHEL 9 only)" >&2
    cargo generate-rpm
    rpm_out=target/generate-rpm
fi
ls -l target/debian/*.deb "$rpm_out"/*.rpm
