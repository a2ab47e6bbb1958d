# A throwaway local Postgres server for the admin's tests. Source it; do not run it.
#   start_test_postgres   initdb in a temporary directory, start on a free port,
#                         export TEST_POSTGRES_URL; fails loudly if it cannot
#   stop_test_postgres    stop it and delete its directory (also run on exit)
# Uses Debian's `postgresql` package (installed by scripts/setup). Postgres
# refuses to run as root, so as root the server runs as the `postgres` user.

PG_TEST_DIR=""
PG_TEST_AS=()

pg_bin_dir() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [[ -n "$dir" && -x "$dir/initdb" ]] || die "Postgres is not installed (scripts/setup installs Debian's postgresql)"
  echo "$dir"
}

start_test_postgres() {
  local bin port tries=0
  bin=$(pg_bin_dir)
  PG_TEST_DIR=$(mktemp -d /tmp/edgeway-pg.XXXXXX)
  if [[ $(id -u) -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || die "as root, Postgres needs the 'postgres' OS user (created by Debian's postgresql package)"
    chown postgres "$PG_TEST_DIR"
    PG_TEST_AS=(runuser -u postgres --)
  fi
  "${PG_TEST_AS[@]}" "$bin/initdb" -D "$PG_TEST_DIR/data" -U postgres --auth=trust -E UTF8 --no-locale \
    >"$PG_TEST_DIR/initdb.log" 2>&1 || { cat "$PG_TEST_DIR/initdb.log"; die "initdb failed"; }
  while :; do
    port=$(free_port)
    # Durability off: a test database is thrown away. The socket stays in the temp dir.
    if "${PG_TEST_AS[@]}" "$bin/pg_ctl" -D "$PG_TEST_DIR/data" -l "$PG_TEST_DIR/server.log" -w -t 30 \
      -o "-p $port -k $PG_TEST_DIR -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
      start >/dev/null 2>&1; then
      break
    fi
    tries=$((tries + 1))
    ((tries < 3)) || { cat "$PG_TEST_DIR/server.log" 2>/dev/null; die "could not start the test Postgres server"; }
  done
  export TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/postgres"
  trap stop_test_postgres EXIT
  say "test Postgres $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port ($PG_TEST_DIR)"
}

stop_test_postgres() {
  [[ -n "$PG_TEST_DIR" && -d "$PG_TEST_DIR" ]] || return 0
  "${PG_TEST_AS[@]}" "$(pg_bin_dir)/pg_ctl" -D "$PG_TEST_DIR/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$PG_TEST_DIR"
  PG_TEST_DIR=""
}
