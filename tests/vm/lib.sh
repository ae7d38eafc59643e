# Shared helpers for the VM test scripts (sourced, not run).
# shellcheck shell=bash

VM_CACHE="${CAXTON_VM_CACHE:-/var/cache/caxton-vm}"

log() { printf '[vm %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { printf '[vm %s] error: %s\n' "$(date +%T)" "$*" >&2; exit 1; }

# need_apt PKG...: installs Debian packages whose command is missing (CI starts from a bare machine).
need_apt() {
  local missing=()
  local pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    log "installing ${missing[*]} (apt)"
    apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
      || die "apt-get install ${missing[*]} failed"
  fi
}

# need_foreign_exec ARCH: makes this host run ARCH's binaries (an arm64 chroot's maintainer
# scripts) through qemu-user-static and binfmt_misc, registering the handler by hand where no
# systemd-binfmt did it (a container, a fresh CI machine).
need_foreign_exec() {
  local qarch
  case "$1" in
    arm64) qarch=aarch64 ;;
    *) die "no qemu-user handler known for architecture $1" ;;
  esac
  need_apt qemu-user-static
  local binfmt=/proc/sys/fs/binfmt_misc
  if [[ ! -e $binfmt/register ]]; then
    mount -t binfmt_misc binfmt_misc "$binfmt" \
      || die "cannot mount binfmt_misc on $binfmt: this host cannot run $1 binaries (a container needs it from its host)"
  fi
  if [[ ! -e $binfmt/qemu-$qarch ]]; then
    local conf=/usr/lib/binfmt.d/qemu-$qarch.conf
    [[ -f $conf ]] || die "qemu-user-static ships no $conf"
    cat "$conf" >"$binfmt/register" || die "cannot register $conf with binfmt_misc"
  fi
  grep -qx enabled "$binfmt/qemu-$qarch" || die "the binfmt_misc handler qemu-$qarch is disabled (echo 1 > $binfmt/qemu-$qarch)"
}
