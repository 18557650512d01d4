# %systemd_post, written out (cargo-generate-rpm does not expand RPM macros).
if [ $1 -eq 1 ]; then
    systemctl --no-reload preset lb-agent.service >/dev/null 2>&1 || :
fi
systemctl daemon-reload >/dev/null 2>&1 || :
