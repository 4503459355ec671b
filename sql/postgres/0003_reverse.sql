-- Format 3 (sqlite2pg 0.3.0): after the cutover, the reverse stream and `fallback`.
--
-- reverse_change: the keys of rows the app changed on Postgres since the cutover, written by
-- the capture triggers the cutover installs before its fence and checks in the transaction
-- that records it (so no write on Postgres predates them). `key` NULL: the whole table (a TRUNCATE, or a table without a primary key).
-- The reverse stream applies a batch to SQLite, then marks exactly those rows applied: a
-- change counts as applied only once SQLite has it, and one committed late (with a lower seq)
-- is still pending. Applied rows are kept a while (`fallback` verifies their keys inside its
-- window), then pruned.
CREATE TABLE sqlite2pg.reverse_change (
  seq bigserial PRIMARY KEY,
  target_table text NOT NULL,
  key text[],
  at timestamptz NOT NULL DEFAULT clock_timestamp(),
  applied_at timestamptz
);
CREATE INDEX reverse_change_pending ON sqlite2pg.reverse_change (seq) WHERE applied_at IS NULL;
CREATE INDEX reverse_change_applied ON sqlite2pg.reverse_change (applied_at);
-- The fallback fence: a lease, like SQLite's. While its triggers exist, the app's writes to
-- the moved tables fail, unless the lease visibly ran out (a killed fallback gives Postgres
-- its writes back by itself). `permanent` once the fallback is recorded.
CREATE TABLE sqlite2pg.pg_fence (
  id int PRIMARY KEY CHECK (id = 1),
  holder text NOT NULL,
  since timestamptz NOT NULL,
  until timestamptz NOT NULL,
  permanent boolean NOT NULL DEFAULT false
);
-- The tables Postgres had at the cutover that sqlite2pg does not move back (made on Postgres
-- alone by the app's migrations, alembic_version say). `fallback` refuses while a table made
-- since holds rows: nothing follows it back.
CREATE TABLE sqlite2pg.pg_only_table (
  target_schema text NOT NULL,
  name text NOT NULL,
  PRIMARY KEY (target_schema, name)
);
CREATE TABLE sqlite2pg.fallback (
  id int PRIMARY KEY CHECK (id = 1),
  fenced_at timestamptz NOT NULL,
  done_at timestamptz NOT NULL,
  window_ms double precision NOT NULL,
  rows_verified bigint NOT NULL,
  sequences_moved int NOT NULL
);
-- Raises unless the lease is seen to have run out. A transaction whose snapshot predates the
-- fence sees no lease row at all, and is refused too.
CREATE FUNCTION sqlite2pg.fence_check() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM sqlite2pg.pg_fence WHERE NOT permanent AND until <= clock_timestamp()) THEN
    RAISE EXCEPTION 'this database has moved back to SQLite; see sqlite2pg status'
      USING ERRCODE = 'read_only_sql_transaction',
            HINT = 'sqlite2pg fallback fenced writes to ' || TG_TABLE_NAME;
  END IF;
  RETURN NULL;
END $$;
-- Whole-table changes (TRUNCATE, tables followed without a key).
CREATE FUNCTION sqlite2pg.reverse_table() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  INSERT INTO sqlite2pg.reverse_change (target_table, key) VALUES (TG_TABLE_NAME, NULL);
  RETURN NULL;
END $$;
-- Wakes the reverse stream when a transaction that changed a moved table commits (NOTIFY is
-- delivered at commit, when the change becomes visible), so a fallback's drain waits for
-- the daemon's next batch, not for its next poll.
CREATE FUNCTION sqlite2pg.reverse_notify() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  PERFORM pg_notify('sqlite2pg_reverse', '');
  RETURN NULL;
END $$;
