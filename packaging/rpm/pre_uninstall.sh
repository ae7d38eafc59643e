# caxton %preun ($1: 0 on erase, 1 when an upgrade removes the old version). Stop on erase only.
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
  systemctl disable --now caxton.service caxton.socket caxton-metrics.socket caxton-api.socket || :
fi
