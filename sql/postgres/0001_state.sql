-- Format 1 (sqlite2pg 0.1.0): snapshot progress, stream position, cutover record, and the
-- foreign keys 0.1.0 set aside during the copy. Kept exactly as 0.1.0 created it, so that a
-- fresh install and an upgraded one go through the same steps.
CREATE SCHEMA IF NOT EXISTS sqlite2pg;
CREATE TABLE IF NOT EXISTS sqlite2pg.meta (
  id int PRIMARY KEY CHECK (id = 1),
  format_version int NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO sqlite2pg.meta (id, format_version) VALUES (1, 1) ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS sqlite2pg.table_state (
  source_table text PRIMARY KEY,
  target_schema text NOT NULL,
  target_table text NOT NULL,
  owned boolean NOT NULL,
  phase text NOT NULL,
  last_key bytea,
  rows_copied bigint NOT NULL DEFAULT 0,
  rows_total bigint,
  started_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS sqlite2pg.stream (
  id int PRIMARY KEY CHECK (id = 1),
  install_id text NOT NULL,
  position bigint NOT NULL,
  source_at double precision,
  applied_at timestamptz,
  changes_applied bigint NOT NULL DEFAULT 0,
  last_error text
);
ALTER TABLE sqlite2pg.stream ADD COLUMN IF NOT EXISTS verified_position bigint;
CREATE TABLE IF NOT EXISTS sqlite2pg.cutover (
  id int PRIMARY KEY CHECK (id = 1),
  fenced_at timestamptz NOT NULL,
  done_at timestamptz NOT NULL,
  window_ms double precision NOT NULL,
  rows_verified bigint NOT NULL,
  position bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS sqlite2pg.deferred_constraint (
  target_schema text NOT NULL,
  target_table text NOT NULL,
  name text NOT NULL,
  original_definition text NOT NULL,
  PRIMARY KEY (target_schema, target_table, name)
);
CREATE TABLE IF NOT EXISTS sqlite2pg.saved_constraint (
  target_schema text NOT NULL,
  target_table text NOT NULL,
  name text NOT NULL,
  definition text NOT NULL,
  PRIMARY KEY (target_schema, target_table, name)
);
