#!/usr/bin/env bash
# Brings up the whole stack locally and prints how to connect:
#   pageserver-lite (127.0.0.1:8081) and walsync (127.0.0.1:8082), a fuse-ibd mount shipping
#   pages and redo to them as the datadir (timeline "main"), and a stock mariadbd on it.
# Interim until `ibdctl up` (issue #6).
#
#   scripts/up.sh [--home DIR]         start (idempotent: reports what already runs)
#   scripts/up.sh down [--home DIR]    stop mariadbd cleanly, unmount, stop the services
#   scripts/up.sh wipe [--home DIR]    down, then delete the compute's local disk: the next
#                                      `up` is a fresh node that comes back from the services
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

CMD=up
case "${1:-}" in down | wipe) CMD=$1; shift ;; esac
HOME_DIR=$REPO/.ibd-local
[ "${1:-}" = "--home" ] && HOME_DIR=$(realpath -m "$2")

DATADIR=$HOME_DIR/computes/main/datadir
CACHE=$HOME_DIR/computes/main/cache
RUN=$HOME_DIR/computes/main/run
SOCK=$RUN/mysqld.sock
PORT=${MARIADB_PORT:-3307}
SERVICES=$HOME_DIR/services
PAGESERVER=127.0.0.1:8081
WALSYNC=127.0.0.1:8082

say() { echo "up: $*" >&2; }
mounted() { grep -q " $DATADIR fuse" /proc/mounts 2>/dev/null; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

if [ "$CMD" = down ] || [ "$CMD" = wipe ]; then
  if alive "$RUN/mariadbd.pid"; then
    say "stopping mariadbd"
    mariadb-admin --socket="$SOCK" -uroot shutdown || kill "$(cat "$RUN/mariadbd.pid")"
    while alive "$RUN/mariadbd.pid"; do sleep 0.2; done
  fi
  if alive "$RUN/fuse-ibd.pid"; then
    say "unmounting $DATADIR"
    kill -TERM "$(cat "$RUN/fuse-ibd.pid")"
    while alive "$RUN/fuse-ibd.pid"; do sleep 0.2; done
  fi
  if [ "$CMD" = wipe ]; then
    say "deleting the compute's local disk ($CACHE)"
    rm -rf "$CACHE" "$DATADIR"
    say "wiped: the next 'scripts/up.sh' mounts a fresh node from the storage services"
    exit 0
  fi
  for svc in walsync pageserver-lite; do
    if alive "$SERVICES/$svc.pid"; then
      say "stopping $svc"
      kill -TERM "$(cat "$SERVICES/$svc.pid")"
      while alive "$SERVICES/$svc.pid"; do sleep 0.2; done
    fi
  done
  say "down"
  exit 0
fi

[ "$(id -u)" -eq 0 ] || { say "run as root: mounting FUSE and running mariadbd need it"; exit 1; }
scripts/setup.sh
command -v cargo >/dev/null || { say "cargo not found: install the Rust toolchain (rustup) first"; exit 1; }
mkdir -p "$DATADIR" "$CACHE" "$RUN" "$SERVICES"

say "building pageserver-lite, walsync and fuse-ibd (release; the first build takes a few minutes)"
cargo build --release --locked -p pageserver-lite -p walsync -p fuse-ibd -q

start_service() { # name listen-address
  if alive "$SERVICES/$1.pid"; then
    say "$1 already runs (pid $(cat "$SERVICES/$1.pid"))"
    return
  fi
  if (exec 3<>"/dev/tcp/${2%:*}/${2#*:}") 2>/dev/null; then
    say "$2 is taken by another process: stop it, or free the port for $1"
    exit 1
  fi
  say "starting $1 on $2"
  nohup "$REPO/target/release/$1" --listen "$2" --data-dir "$SERVICES/$1" >"$SERVICES/$1.log" 2>&1 &
  echo $! >"$SERVICES/$1.pid"
  for _ in $(seq 1 100); do
    curl -sf "http://$2/healthz" >/dev/null 2>&1 && return
    sleep 0.1
  done
  tail -5 "$SERVICES/$1.log" >&2
  say "$1 did not come up"
  exit 1
}
start_service pageserver-lite "$PAGESERVER"
start_service walsync "$WALSYNC"

if ! alive "$RUN/fuse-ibd.pid"; then
  mounted && fusermount3 -u -z "$DATADIR"
  mkdir -p "$DATADIR"
  say "mounting $DATADIR (timeline main)"
  nohup "$REPO/target/release/fuse-ibd" mount --datadir "$DATADIR" --cache-dir "$CACHE" \
    --pageserver "http://$PAGESERVER" --walsync "http://$WALSYNC" --timeline main \
    --metrics 127.0.0.1:9091 >"$RUN/fuse-ibd.log" 2>&1 &
  echo $! >"$RUN/fuse-ibd.pid"
  for _ in $(seq 1 100); do mounted && break; sleep 0.1; done
  mounted || { cat "$RUN/fuse-ibd.log" >&2; say "fuse-ibd did not mount"; exit 1; }
else
  say "fuse-ibd already runs (pid $(cat "$RUN/fuse-ibd.pid"))"
fi

cat >"$RUN/my.cnf" <<EOF
[mariadbd]
datadir=$DATADIR
socket=$SOCK
port=$PORT
bind-address=127.0.0.1
pid-file=$RUN/mariadbd.pid
log-error=$RUN/mariadbd.err
user=root
innodb_doublewrite=0
innodb_flush_neighbors=0
innodb_buffer_pool_size=256M
EOF

if ! alive "$RUN/mariadbd.pid"; then
  if [ ! -d "$DATADIR/mysql" ]; then
    say "creating the datadir (mariadb-install-db)"
    mariadb-install-db --defaults-file="$RUN/my.cnf" --auth-root-authentication-method=normal \
      --skip-test-db >"$RUN/install.log" 2>&1 || { cat "$RUN/install.log" >&2; exit 1; }
  fi
  say "starting mariadbd"
  nohup mariadbd --defaults-file="$RUN/my.cnf" >/dev/null 2>&1 &
  for _ in $(seq 1 300); do
    mariadb --socket="$SOCK" -uroot -e 'SELECT 1' >/dev/null 2>&1 && break
    sleep 0.2
  done
  mariadb --socket="$SOCK" -uroot -e 'SELECT 1' >/dev/null 2>&1 || { tail -20 "$RUN/mariadbd.err" >&2; exit 1; }
else
  say "mariadbd already runs (pid $(cat "$RUN/mariadbd.pid"))"
fi

cat <<EOF

MariaDB is up on a fuse-ibd datadir (pages -> pageserver-lite $PAGESERVER, redo -> walsync $WALSYNC).
  connect:  mariadb --socket=$SOCK -uroot
            or over TCP: mariadb -h127.0.0.1 -P$PORT -uroot
  status:   cat $DATADIR/.fuse-ibd/status
  metrics:  curl -s 127.0.0.1:9091/metrics
  logs:     $RUN/fuse-ibd.log  $RUN/mariadbd.err
  stop:     scripts/up.sh down
  wipe the compute's disk (stateless restart): scripts/up.sh wipe && scripts/up.sh
EOF
