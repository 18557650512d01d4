# %systemd_preun: stop on erase (the agent withdraws its VIPs first); on upgrade
# ask the running agent to keep its announcements across the restart.
if [ $1 -eq 0 ]; then
    systemctl --no-reload disable --now lb-agent.service >/dev/null 2>&1 || :
elif systemctl is-active --quiet lb-agent.service 2>/dev/null; then
    /usr/bin/lb-agent handover >/dev/null 2>&1 || :
fi
