#!/usr/bin/env bash
# Brings up the whole stack on this machine and prints how to connect: the entry point of a fresh
# Debian 12 machine with Rust installed. Installs the system packages (scripts/setup.sh), builds
# the release binaries (cargo rebuilds only what changed), then hands over to `ibdctl up`:
# pageserver-lite (127.0.0.1:8081), walsync (:8082), a fuse-ibd mount as MariaDB's datadir
# shipping pages and redo to them (project and timeline "main"), a stock mariadbd on it, and the
# control plane (:8080). Ports that are taken move to the next free one, with a message.
#
#   scripts/up.sh [ibdctl up options]     bring up the stack (idempotent: reports what runs);
#                                         e.g. --home DIR (default ./.ibd-local), --mariadb-port N
#   scripts/up.sh down [--home DIR]       ibdctl down: stop everything, keep the state
#   scripts/up.sh wipe [--home DIR]       down, then delete the compute's local disk: the next
#                                         `scripts/up.sh` mounts a fresh node that comes back
#                                         from the storage services (the stateless restart)
#   scripts/up.sh <ibdctl command> ...    status, sql, logs, compute, project, serve
set -euo pipefail
cd "$(dirname "$0")/.."
IBDCTL=${CARGO_TARGET_DIR:-target}/release/ibdctl
# The command ibdctl names in the lines it prints for the operator.
export IBDCTL_COMMAND=scripts/up.sh

case "${1:-}" in
  down | wipe | status | sql | logs | compute | project | serve)
    if [ ! -x "$IBDCTL" ]; then
      echo "up: $IBDCTL is not built yet (nothing runs): scripts/up.sh builds and starts the stack" >&2
      exit 1
    fi
    if [ "$1" = wipe ]; then
      shift
      "$IBDCTL" down "$@"
      exec "$IBDCTL" compute wipe "$@"
    fi
    exec "$IBDCTL" "$@"
    ;;
  up) shift ;;
esac

if [ "$(id -u)" -ne 0 ]; then
  echo "up: run as root (sudo scripts/up.sh): fuse-ibd mounts the datadir and mariadbd runs as root" >&2
  exit 1
fi
scripts/setup.sh
if ! command -v cargo >/dev/null; then
  echo "up: cargo not found: install the Rust toolchain (https://rustup.rs), then run scripts/up.sh again" >&2
  exit 1
fi
echo "up: building ibdctl, pageserver-lite, walsync and fuse-ibd (release; the first build takes a few minutes)" >&2
cargo build --release --locked -p ibdctl -p pageserver-lite -p walsync -p fuse-ibd -p innodb-page-server-plugin
exec "$IBDCTL" up "$@"
