# Status-socket group (members may read and drain); before files get their group.
getent group lb-agent >/dev/null || groupadd -r lb-agent
