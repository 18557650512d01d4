#!/usr/bin/env bash
# Builds the release binary once, the man page and completions, then the .deb
# and the .rpm from that one binary (into target/x86_64-unknown-linux-gnu/
# debian/ and .../generate-rpm/).
# Needs cargo-deb and cargo-generate-rpm (`cargo install --locked cargo-deb@3.8.0
# cargo-generate-rpm@0.21.1`), and for a binary that runs on RHEL 8
# cargo-zigbuild (`cargo install --locked cargo-zigbuild@0.24.1`) with the ziglang
# wheel (`pip install ziglang`); .ci/run installs them.
set -euo pipefail
cd "$(dirname "$0")/.."

# One binary for both packages: linked against glibc 2.28's symbol versions
# (cargo-zigbuild with the ziglang wheel) it runs on RHEL 8 (glibc 2.28) and 9
# as well as on Debian 12 (2.36). Without zigbuild it is a plain build for
# this host, and the RPM then needs this host's glibc (said below).
target=x86_64-unknown-linux-gnu
bin="target/$target/release/lb-agent"
if command -v cargo-zigbuild >/dev/null 2>&1 && python3 -m ziglang version >/dev/null 2>&1; then
    cargo zigbuild --release --locked --bin lb-agent --target "$target.2.28"
    need=$(objdump -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
    echo "binary: highest glibc symbol version $need"
    if [ "$(printf '%s\n' GLIBC_2.28 "$need" | sort -V | tail -1)" != GLIBC_2.28 ]; then
        echo "the binary needs $need, newer than RHEL 8's glibc 2.28" >&2
        exit 1
    fi
else
    echo "!!! cargo-zigbuild or ziglang missing: the binary needs this host's glibc (the RPM: RHEL 9 only)" >&2
    cargo build --release --locked --bin lb-agent --target "$target"
fi
"$bin" --version
mkdir -p target/assets
"$bin" man | gzip -9n > target/assets/lb-agent.8.gz
"$bin" completions bash > target/assets/lb-agent.bash
"$bin" completions zsh > target/assets/_lb-agent
"$bin" completions fish > target/assets/lb-agent.fish
# Both tools take the binary from target/$target/release/ when given --target
# (the asset paths say target/release/).
cargo deb --no-build --locked --target "$target"
cargo generate-rpm --target "$target"
ls -l target/"$target"/debian/*.deb target/"$target"/generate-rpm/*.rpm
