#!/usr/bin/env bash
# Produces the small samples under ibd-format/testdata/ with the installed MariaDB:
#   pages/*.page       single 16 KiB pages of each type (full_crc32 and legacy crc32 tablespaces)
#   redo/wrapped.*     a 4 MiB ib_logfile0 (the server's minimum) that wrapped, after a crash
#   redo/resized.*     an ib_logfile0 written after a log resize (first LSN != 0x3000), after a crash
# Each redo sample comes with a .env file recording what the server itself reported when it
# recovered a copy of that crashed datadir ("End of log at LSN=...").
# Run as root (mariadbd runs with --user=root). Takes about a minute.
set -euo pipefail

OUT=${1:-$(dirname "$0")/../ibd-format/testdata}
OUT=$(realpath -m "$OUT")
WORK=$(mktemp -d /tmp/ibd-testdata.XXXXXX)
PID=""

cleanup() {
  [ -n "$PID" ] && kill -9 "$PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

log() { echo "make-testdata: $*" >&2; }

install_db() { # datadir [mariadbd options...]
  local dir=$1; shift
  mariadb-install-db --no-defaults --datadir="$dir" --user=root --auth-root-authentication-method=normal \
    --skip-test-db "$@" >"$dir.install.log" 2>&1 || { cat "$dir.install.log" >&2; exit 1; }
}

start() { # datadir [mariadbd options...]
  local dir=$1; shift
  mariadbd --no-defaults --datadir="$dir" --socket="$dir.sock" --skip-networking --user=root \
    --log-error="$dir.err" --innodb-buffer-pool-size=32M --innodb-doublewrite=0 "$@" &
  PID=$!
  for _ in $(seq 1 120); do
    if mariadb --socket="$dir.sock" -uroot -e 'SELECT 1' >/dev/null 2>&1; then return 0; fi
    kill -0 "$PID" 2>/dev/null || { cat "$dir.err" >&2; log "mariadbd died"; exit 1; }
    sleep 0.5
  done
  cat "$dir.err" >&2; log "mariadbd did not answer"; exit 1
}

sql() { # datadir statements
  mariadb --socket="$1.sock" -uroot -N -B --database=mysql -e "$2"
}

stop() { # datadir
  mariadb-admin --socket="$1.sock" -uroot shutdown
  wait "$PID" || true
  PID=""
}

crash() {
  kill -9 "$PID"
  wait "$PID" 2>/dev/null || true
  PID=""
}

page() { # file page_no -> raw page on stdout
  dd if="$1" bs=16384 skip="$2" count=1 status=none
}

page_type() { # file page_no
  od -An -tu2 --endian=big -j $(($2 * 16384 + 24)) -N2 "$1" | tr -d ' '
}

first_page_of_type() { # file type
  local n=$(($(stat -c %s "$1") / 16384))
  for ((p = 0; p < n; p++)); do
    if [ "$(page_type "$1" "$p")" = "$2" ]; then echo "$p"; return 0; fi
  done
  return 1
}

first_zero_page() { # file
  local n=$(($(stat -c %s "$1") / 16384))
  for ((p = 0; p < n; p++)); do
    if cmp -s <(page "$1" "$p") <(head -c 16384 /dev/zero); then echo "$p"; return 0; fi
  done
  return 1
}

# Recovers a copy of a crashed datadir and prints the server's own "End of log at LSN=".
reported_end_of_log() { # datadir
  local copy=$WORK/recover
  rm -rf "$copy" "$copy.err"
  cp -a "$1" "$copy"
  start "$copy" "${@:2}"
  stop "$copy"
  grep -oE 'End of log at LSN=[0-9]+' "$copy.err" | head -1 | cut -d= -f2
}

workload() { # datadir rows
  sql "$1" "CREATE DATABASE IF NOT EXISTS w; CREATE TABLE IF NOT EXISTS w.t (id INT AUTO_INCREMENT PRIMARY KEY,
            v VARCHAR(200), n INT, KEY (n)) ENGINE=InnoDB;"
  local i
  for ((i = 0; i < $2; i += 500)); do
    sql "$1" "INSERT INTO w.t (v, n) SELECT CONCAT(REPEAT('payload-', 22), seq), FLOOR(RAND()*1000000) FROM seq_1_to_500;"
  done
  sql "$1" "UPDATE w.t SET n = n + 1 WHERE id % 7 = 0; DELETE FROM w.t WHERE id % 11 = 0;"
}

mkdir -p "$OUT/pages" "$OUT/redo"

# --- pages -----------------------------------------------------------------------------------
log "pages: full_crc32 and legacy crc32 tablespaces"
D=$WORK/pages
install_db "$D"
start "$D"
sql "$D" "CREATE DATABASE p;
  CREATE TABLE p.f (id INT PRIMARY KEY, b LONGTEXT) ENGINE=InnoDB;
  INSERT INTO p.f SELECT seq, IF(seq = 1, REPEAT('blob', 20000), CONCAT('row', seq)) FROM seq_1_to_200;
  SET GLOBAL innodb_checksum_algorithm = crc32;
  CREATE TABLE p.legacy (id INT PRIMARY KEY, v VARCHAR(100)) ENGINE=InnoDB;
  INSERT INTO p.legacy SELECT seq, CONCAT('legacy', seq) FROM seq_1_to_100;
  SET GLOBAL innodb_checksum_algorithm = full_crc32;"
stop "$D"
rm -f "$OUT"/pages/*.page
page "$D/ibdata1" 0 >"$OUT/pages/ibdata1-fsp_hdr.page"
page "$D/ibdata1" 1 >"$OUT/pages/ibdata1-ibuf_bitmap.page"
page "$D/ibdata1" 2 >"$OUT/pages/ibdata1-inode.page"
page "$D/ibdata1" 5 >"$OUT/pages/ibdata1-trx_sys.page"
page "$D/ibdata1" 7 >"$OUT/pages/ibdata1-sys.page"
page "$D/ibdata1" "$(first_page_of_type "$D/ibdata1" 2)" >"$OUT/pages/ibdata1-undo_log.page"
page "$D/ibdata1" "$(first_page_of_type "$D/ibdata1" 17855)" >"$OUT/pages/ibdata1-index.page"
page "$D/p/f.ibd" 0 >"$OUT/pages/full_crc32-fsp_hdr.page"
page "$D/p/f.ibd" 3 >"$OUT/pages/full_crc32-index.page"
page "$D/p/f.ibd" "$(first_page_of_type "$D/p/f.ibd" 10)" >"$OUT/pages/full_crc32-blob.page"
page "$D/p/legacy.ibd" 0 >"$OUT/pages/crc32-fsp_hdr.page"
page "$D/p/legacy.ibd" 2 >"$OUT/pages/crc32-inode.page"
page "$D/p/legacy.ibd" 3 >"$OUT/pages/crc32-index.page"
# A never-written page: the first all-zero page of ibdata1 (allocated, beyond what was used).
page "$D/ibdata1" "$(first_zero_page "$D/ibdata1")" >"$OUT/pages/zero.page"

# --- redo: wrapped --------------------------------------------------------------------------
log "redo: a 4 MiB log that wraps, then a crash"
D=$WORK/wrapped
install_db "$D" --innodb-log-file-size=4M
start "$D" --innodb-log-file-size=4M
workload "$D" 30000
crash
end=$(reported_end_of_log "$D" --innodb-log-file-size=4M)
[ -n "$end" ] || { log "the server did not report the end of the log"; exit 1; }
gzip -9 -c "$D/ib_logfile0" >"$OUT/redo/wrapped.ib_logfile0.gz"
echo "SERVER_END_OF_LOG_LSN=$end" >"$OUT/redo/wrapped.env"

# --- redo: after a resize -------------------------------------------------------------------
log "redo: a log resized from 4 MiB to 5 MiB, some work, then a crash"
D=$WORK/resized
install_db "$D" --innodb-log-file-size=4M
start "$D" --innodb-log-file-size=5M
grep -q 'Resizing redo log' "$D.err" || { log "the server did not resize the log"; exit 1; }
workload "$D" 3000
crash
end=$(reported_end_of_log "$D" --innodb-log-file-size=5M)
[ -n "$end" ] || { log "the server did not report the end of the log"; exit 1; }
gzip -9 -c "$D/ib_logfile0" >"$OUT/redo/resized.ib_logfile0.gz"
echo "SERVER_END_OF_LOG_LSN=$end" >"$OUT/redo/resized.env"

mariadbd --version >"$OUT/SERVER_VERSION"
du -sh "$OUT" >&2
log "done: $OUT"
