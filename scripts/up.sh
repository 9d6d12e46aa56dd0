#!/usr/bin/env bash
# Brings up what the stack has today and prints how to connect:
#   a fuse-ibd mount as the datadir, and a stock mariadbd on it.
# Interim until `ibdctl up` (issue #6); fuse-ibd does not yet ship pages and redo to
# pageserver-lite and walsync (issue #5), so the data lives in the local cache only.
#
#   scripts/up.sh [--home DIR]     start (idempotent: reports what already runs)
#   scripts/up.sh down [--home DIR]  stop mariadbd cleanly, then unmount
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

CMD=up
[ "${1:-}" = "down" ] && { CMD=down; shift; }
HOME_DIR=$REPO/.ibd-local
[ "${1:-}" = "--home" ] && HOME_DIR=$(realpath -m "$2")

DATADIR=$HOME_DIR/computes/main/datadir
CACHE=$HOME_DIR/computes/main/cache
RUN=$HOME_DIR/computes/main/run
SOCK=$RUN/mysqld.sock
PORT=${MARIADB_PORT:-3307}

say() { echo "up: $*" >&2; }
mounted() { grep -q " $DATADIR fuse" /proc/mounts 2>/dev/null; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

if [ "$CMD" = down ]; then
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
  say "down"
  exit 0
fi

[ "$(id -u)" -eq 0 ] || { say "run as root: mounting FUSE and running mariadbd need it"; exit 1; }
scripts/setup.sh
command -v cargo >/dev/null || { say "cargo not found: install the Rust toolchain (rustup) first"; exit 1; }
mkdir -p "$DATADIR" "$CACHE" "$RUN"

if ! alive "$RUN/fuse-ibd.pid"; then
  say "building fuse-ibd (release; first build takes a few minutes)"
  cargo build --release --locked -p fuse-ibd -q
  mounted && fusermount3 -u -z "$DATADIR"
  say "mounting $DATADIR"
  nohup "$REPO/target/release/fuse-ibd" mount --datadir "$DATADIR" --cache-dir "$CACHE" \
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

MariaDB is up on a fuse-ibd datadir.
  connect:  mariadb --socket=$SOCK -uroot
            or over TCP: mariadb -h127.0.0.1 -P$PORT -uroot
  status:   cat $DATADIR/.fuse-ibd/status
  metrics:  curl -s 127.0.0.1:9091/metrics
  logs:     $RUN/fuse-ibd.log  $RUN/mariadbd.err
  stop:     scripts/up.sh down
Not yet: page shipping to pageserver-lite and redo to walsync (issue #5), ibdctl (issue #6).
EOF
