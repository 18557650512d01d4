# %systemd_post, written out (cargo-generate-rpm does not expand RPM macros).
if [ $1 -eq 1 ]; then
    systemctl --no-reload preset lb-agent.service >/dev/null 2>&1 || :
fi
systemctl daemon-reload >/dev/null 2>&1 || :
# Upgrade: say loudly if this version would refuse the document the host runs
# now (a VIP outside [vip] allowed_prefixes, ...): after the restart it would
# withdraw every VIP.
if [ $1 -ge 2 ]; then
    if ! out=$(/usr/bin/lb-agent check-config --cache 2>&1 >/dev/null); then
        echo "!!! lb-agent: WARNING: this version refuses the current desired state:" >&2
        echo "$out" >&2
        echo "!!! Fix /etc/lb-agent/agent.toml [vip] or the API's document, then: systemctl restart lb-agent" >&2
    fi
fi
