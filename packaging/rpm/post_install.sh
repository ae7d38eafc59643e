# caxton %post ($1: 1 on install, 2 on upgrade). The user first: caxton.socket names it.
if command -v systemd-sysusers >/dev/null 2>&1; then
  systemd-sysusers caxton.conf || :
fi
if [ -d /run/systemd/system ]; then
  systemd-tmpfiles --create caxton.conf || :
fi
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload || :
  if [ "$1" -eq 1 ]; then
    systemctl enable --now caxton.socket caxton.service || :
  fi
fi
