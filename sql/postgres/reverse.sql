-- @capture_function  Records the key of each row the app changes on {table} (and the old key
-- when an UPDATE changes it), for the tenant its trigger names. Keys go in as JSON text, which
-- does not depend on the session's DateStyle. SECURITY DEFINER: the app's role needs no rights
-- on the sqlite2pg schema.
CREATE OR REPLACE FUNCTION {function}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  IF TG_OP <> 'DELETE' THEN
    INSERT INTO sqlite2pg.reverse_change (tenant, target_table, key) VALUES (TG_ARGV[0], TG_TABLE_NAME, ARRAY[{new_key}]);
  END IF;
  IF TG_OP = 'DELETE' THEN
    INSERT INTO sqlite2pg.reverse_change (tenant, target_table, key) VALUES (TG_ARGV[0], TG_TABLE_NAME, ARRAY[{old_key}]);
  ELSIF TG_OP = 'UPDATE' THEN
    IF ROW({old_row}) IS DISTINCT FROM ROW({new_row}) THEN
      INSERT INTO sqlite2pg.reverse_change (tenant, target_table, key) VALUES (TG_ARGV[0], TG_TABLE_NAME, ARRAY[{old_key}]);
    END IF;
  END IF;
  RETURN NULL;
END $$;
-- @capture_rows  Row capture on a table with a key. Installed before the cutover's fence, while
-- the forward stream still writes: sqlite2pg's own sessions set sqlite2pg.origin and are not
-- recorded (what came from SQLite need not go back).
CREATE TRIGGER sqlite2pg_reverse AFTER INSERT OR UPDATE OR DELETE ON {table}
FOR EACH ROW
WHEN (current_setting('sqlite2pg.origin', true) IS DISTINCT FROM 'sqlite') EXECUTE FUNCTION {function}({tenant});
-- @capture_statements  Statement capture on a table without one: the whole table is re-read.
CREATE TRIGGER sqlite2pg_reverse AFTER INSERT OR UPDATE OR DELETE ON {table}
FOR EACH STATEMENT
WHEN (current_setting('sqlite2pg.origin', true) IS DISTINCT FROM 'sqlite') EXECUTE FUNCTION sqlite2pg.reverse_table({tenant});
-- @capture_truncate  A TRUNCATE fires no row trigger: the whole table is re-read.
CREATE TRIGGER sqlite2pg_reverse_truncate AFTER TRUNCATE ON {table}
FOR EACH STATEMENT
WHEN (current_setting('sqlite2pg.origin', true) IS DISTINCT FROM 'sqlite') EXECUTE FUNCTION sqlite2pg.reverse_table({tenant});
-- @capture_notify  One notification per statement, delivered at commit.
CREATE TRIGGER sqlite2pg_reverse_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table}
FOR EACH STATEMENT
WHEN (current_setting('sqlite2pg.origin', true) IS DISTINCT FROM 'sqlite') EXECUTE FUNCTION sqlite2pg.reverse_notify({tenant});
-- @fence  The fallback fence on one table.
CREATE TRIGGER sqlite2pg_fence BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table}
FOR EACH STATEMENT EXECUTE FUNCTION sqlite2pg.fence_check({tenant});
-- @unfence
DROP TRIGGER IF EXISTS sqlite2pg_fence ON {table};
-- @uncapture
DROP TRIGGER IF EXISTS sqlite2pg_reverse ON {table};
DROP TRIGGER IF EXISTS sqlite2pg_reverse_truncate ON {table};
DROP TRIGGER IF EXISTS sqlite2pg_reverse_notify ON {table};
