#!/usr/bin/env bash
# Installs the Debian packages of the commands that are missing.
#   scripts/ensure-packages.sh COMMAND:PACKAGE ... PACKAGE ...
# A command counts as present when it is on PATH or in /usr/sbin; a bare
# PACKAGE when dpkg has it installed. As root the
# missing packages are apt-get installed; otherwise this warns that whatever
# needs them will be skipped, and succeeds.
set -euo pipefail

need=()
for pair in "$@"; do
    if [ "${pair#*:}" = "$pair" ]; then
        dpkg-query -W -f='${Status}' "$pair" 2>/dev/null | grep -q "ok installed" || need+=("$pair")
        continue
    fi
    cmd="${pair%%:*}" pkg="${pair##*:}"
    command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || need+=("$pkg")
done
[ "${#need[@]}" -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
else
    echo "!!! missing ${need[*]} and not root: what needs them will be SKIPPED" >&2
fi
