-- Format 2 (sqlite2pg 0.2.0): foreign keys follow SQLite while streaming (none enforced on
-- replicated tables; definitions wait in foreign_key until cutover), and the snapshot handoff
-- of tables followed by row images.
CREATE TABLE sqlite2pg.foreign_key (
  target_schema text NOT NULL,
  target_table text NOT NULL,
  name text NOT NULL,
  definition text NOT NULL,
  columns text[] NOT NULL,
  parent_schema text NOT NULL,
  parent_table text NOT NULL,
  parent_columns text[] NOT NULL,
  PRIMARY KEY (target_schema, target_table, name)
);
CREATE TABLE sqlite2pg.image_chunk (
  source_table text NOT NULL,
  upto_rowid bigint,
  seq bigint NOT NULL,
  schema_version bigint NOT NULL
);
-- 0.1.0 made the app's own foreign keys DEFERRABLE while streaming and kept the originals:
-- put them back as the app made them, so that the next run keeps them unchanged.
DO $$
DECLARE r record;
BEGIN
  FOR r IN SELECT d.* FROM sqlite2pg.deferred_constraint d
           JOIN pg_namespace n ON n.nspname = d.target_schema
           JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = d.target_table
           JOIN pg_constraint k ON k.conrelid = c.oid AND k.conname = d.name
  LOOP
    EXECUTE format('ALTER TABLE %I.%I ALTER CONSTRAINT %I NOT DEFERRABLE',
                   r.target_schema, r.target_table, r.name);
  END LOOP;
END $$;
-- Keys a 0.1.0 snapshot had dropped and not yet put back: back on their tables NOT VALID (no
-- row is read), where the next run finds them and keeps them with the others.
DO $$
DECLARE r record;
BEGIN
  FOR r IN SELECT s.* FROM sqlite2pg.saved_constraint s
           JOIN pg_namespace n ON n.nspname = s.target_schema
           JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = s.target_table
           WHERE NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = c.oid AND k.conname = s.name)
  LOOP
    EXECUTE format('ALTER TABLE %I.%I ADD CONSTRAINT %I %s NOT VALID',
                   r.target_schema, r.target_table, r.name, r.definition);
  END LOOP;
END $$;
DROP TABLE sqlite2pg.deferred_constraint;
DROP TABLE sqlite2pg.saved_constraint;
