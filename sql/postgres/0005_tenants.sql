-- Format 5 (sqlite2pg 0.5.0): one Postgres database holds the migrations of many SQLite files,
-- a fleet's tenants, each with its own tables, position, cutover and fallback. Every state row
-- names its tenant. '' is the tenant of no name: the one file of `--source`, so that an
-- install made by an older sqlite2pg carries on as that tenant, unchanged.
ALTER TABLE sqlite2pg.table_state ADD COLUMN tenant text NOT NULL DEFAULT '';
ALTER TABLE sqlite2pg.table_state DROP CONSTRAINT table_state_pkey;
ALTER TABLE sqlite2pg.table_state ADD PRIMARY KEY (tenant, source_table);
ALTER TABLE sqlite2pg.table_state ALTER COLUMN tenant DROP DEFAULT;
ALTER TABLE sqlite2pg.image_chunk ADD COLUMN tenant text NOT NULL DEFAULT '';
ALTER TABLE sqlite2pg.image_chunk ALTER COLUMN tenant DROP DEFAULT;
CREATE INDEX image_chunk_table ON sqlite2pg.image_chunk (tenant, source_table);
ALTER TABLE sqlite2pg.setting ADD COLUMN tenant text NOT NULL DEFAULT '';
ALTER TABLE sqlite2pg.setting DROP CONSTRAINT setting_pkey;
ALTER TABLE sqlite2pg.setting ADD PRIMARY KEY (tenant, name);
ALTER TABLE sqlite2pg.setting ALTER COLUMN tenant DROP DEFAULT;
-- The one-row tables become one row per tenant (their `id = 1` goes with its check).
ALTER TABLE sqlite2pg.stream ADD COLUMN tenant text NOT NULL DEFAULT '';
ALTER TABLE sqlite2pg.stream DROP COLUMN id;
ALTER TABLE sqlite2pg.stream ADD PRIMARY KEY (tenant);
ALTER TABLE sqlite2pg.stream ALTER COLUMN tenant DROP DEFAULT;
ALTER TABLE sqlite2pg.cutover ADD COLUMN tenant text NOT NULL DEFAULT '';
ALTER TABLE sqlite2pg.cutover DROP COLUMN id;
ALTER TABLE sqlite2pg.cutover ADD PRIMARY KEY (tenant);
ALTER TABLE sqlite2pg.cutover ALTER COLUMN tenant DROP DEFAULT;
ALTER TABLE sqlite2pg.fallback ADD COLUMN tenant text NOT NULL DEFAULT '';
ALTER TABLE sqlite2pg.fallback DROP COLUMN id;
ALTER TABLE sqlite2pg.fallback ADD PRIMARY KEY (tenant);
ALTER TABLE sqlite2pg.fallback ALTER COLUMN tenant DROP DEFAULT;
ALTER TABLE sqlite2pg.pg_fence ADD COLUMN tenant text NOT NULL DEFAULT '';
ALTER TABLE sqlite2pg.pg_fence DROP COLUMN id;
ALTER TABLE sqlite2pg.pg_fence ADD PRIMARY KEY (tenant);
ALTER TABLE sqlite2pg.pg_fence ALTER COLUMN tenant DROP DEFAULT;
-- The reverse capture's triggers name their tenant as their argument. Those a cutover of an
-- older sqlite2pg installed name none and keep the default: the tenant of no name.
ALTER TABLE sqlite2pg.reverse_change ADD COLUMN tenant text NOT NULL DEFAULT '';
DROP INDEX sqlite2pg.reverse_change_pending;
CREATE INDEX reverse_change_pending ON sqlite2pg.reverse_change (tenant, seq) WHERE applied_at IS NULL;
CREATE OR REPLACE FUNCTION sqlite2pg.fence_check() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM sqlite2pg.pg_fence WHERE tenant = coalesce(TG_ARGV[0], '')
                 AND NOT permanent AND until <= clock_timestamp()) THEN
    RAISE EXCEPTION 'this database has moved back to SQLite; see sqlite2pg status'
      USING ERRCODE = 'read_only_sql_transaction',
            HINT = 'sqlite2pg fallback fenced writes to ' || TG_TABLE_NAME;
  END IF;
  RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION sqlite2pg.reverse_table() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  INSERT INTO sqlite2pg.reverse_change (tenant, target_table, key)
    VALUES (coalesce(TG_ARGV[0], ''), TG_TABLE_NAME, NULL);
  RETURN NULL;
END $$;
-- The payload names the tenant, so that each tenant's reverse stream wakes for its own.
CREATE OR REPLACE FUNCTION sqlite2pg.reverse_notify() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  PERFORM pg_notify('sqlite2pg_reverse', coalesce(TG_ARGV[0], ''));
  RETURN NULL;
END $$;
-- The tenants whose migration has begun, each with the number its daemon's advisory locks are
-- taken under (names are not hashed into keys: two names of a large fleet would share one).
-- The tenant of no name keeps the keys older daemons took, so that one still running is seen.
CREATE TABLE sqlite2pg.tenant (
  name text PRIMARY KEY,
  lock_id int GENERATED ALWAYS AS IDENTITY UNIQUE,
  registered_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO sqlite2pg.tenant (name)
  SELECT '' WHERE EXISTS (SELECT 1 FROM sqlite2pg.table_state) OR EXISTS (SELECT 1 FROM sqlite2pg.stream);
