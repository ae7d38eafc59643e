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
