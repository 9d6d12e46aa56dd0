#!/usr/bin/env bash
# Installs every system package the project needs, if missing. Idempotent; quiet when all is present.
# Usage: scripts/setup.sh            (as root, or with sudo available)
set -euo pipefail

# package -> a file or command that proves it is installed
declare -A NEED=(
  [mariadb-server]=/usr/sbin/mariadbd
  [mariadb-client]=/usr/bin/mariadb
  [fuse3]=/usr/bin/fusermount3
  [clang]=/usr/bin/clang
  [llvm]=/usr/bin/llvm-strip
  [libbpf-dev]=/usr/include/bpf/bpf_helpers.h
  [linux-libc-dev]=/usr/include/linux/bpf.h
  [bpftool]=/usr/sbin/bpftool
  [fio]=/usr/bin/fio
  [sysbench]=/usr/bin/sysbench
  [bindfs]=/usr/bin/bindfs
  [strace]=/usr/bin/strace
  [pkg-config]=/usr/bin/pkg-config
  [curl]=/usr/bin/curl
  [mariadb-backup]=/usr/bin/mariadb-backup
  [libmariadbd-dev]=/usr/include/mariadb/server/mysql/plugin.h
)

missing=()
for pkg in "${!NEED[@]}"; do
  [ -e "${NEED[$pkg]}" ] || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup: missing packages (${missing[*]}) and not root; run as root" >&2; exit 1; }
  SUDO=sudo
fi
echo "setup: installing ${missing[*]} ..." >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
# mariadb-server's postinst starts a service on some systems; we never use the system instance.
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
if command -v systemctl >/dev/null && systemctl is-active --quiet mariadb 2>/dev/null; then
  $SUDO systemctl stop mariadb || true
fi
for pkg in "${missing[@]}"; do
  [ -e "${NEED[$pkg]}" ] || { echo "setup: $pkg installed but ${NEED[$pkg]} is still missing" >&2; exit 1; }
done
echo "setup: done" >&2
