-- Format 1 (sqlite2pg 0.1.0): the changelog, captured tables and install identity, in the
-- app's SQLite file. No AUTOINCREMENT: it would create sqlite_sequence, which can never be
-- dropped again; pruning always keeps the newest row instead, so seq never goes back.
CREATE TABLE IF NOT EXISTS _sqlite2pg_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS _sqlite2pg_tables (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS _sqlite2pg_changes (seq INTEGER PRIMARY KEY, tbl INTEGER NOT NULL, k1, k2, k3, k4, at REAL NOT NULL);
