#!/usr/bin/env bash
# Builds the release binary, the man page and completions, then the .deb and
# the .rpm (into target/debian/ and target/generate-rpm/).
# Needs cargo-deb and cargo-generate-rpm (`cargo install --locked cargo-deb@3.8.0
# cargo-generate-rpm@0.21.1`); .ci/run installs them.
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
cargo generate-rpm
ls -l target/debian/*.deb target/generate-rpm/*.rpm
