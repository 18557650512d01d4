# %systemd_postun_with_restart
systemctl daemon-reload >/dev/null 2>&1 || :
if [ $1 -ge 1 ]; then
    systemctl try-restart lb-agent.service >/dev/null 2>&1 || :
fi
