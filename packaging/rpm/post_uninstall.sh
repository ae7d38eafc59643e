# caxton %postun ($1: 0 on erase, 1 after an upgrade). An upgrade restarts the running service
# on the new binaries; /etc/caxton (%config(noreplace)) and /var/lib/caxton are left alone.
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload || :
  if [ "$1" -ge 1 ]; then
    systemctl try-restart caxton.service || :
  fi
fi
