-- The capture triggers sqlite2pg puts on each replicated table of the app's SQLite file.
-- They run inside the APP's SQLite library, which may be years older than ours: nothing newer
-- than SQLite 3.8, nothing that can fail on a value (keys and images are copied as they are,
-- whatever their storage class). `sqlite2pg install --dry-run` prints them for real tables.
--
-- Each section below (`-- @name` up to the next one) is a template. The `{placeholders}` are
-- only ever filled with quoted identifiers, table ids and lists of them, never with values:
--   {table}        the captured table          {id}     its changelog id
--   {trigger}      the trigger's name          {slots}  k1, k2, ... (one per key column)
--   {new_key}      NEW."a", NEW."b"            {old_key} OLD."a", OLD."b"
--   {key_columns}  "a", "b"                    {key_changed} OLD."a" IS NOT NEW."a" COLLATE BINARY OR ...

-- @key_insert  A row appeared: its key.
DROP TRIGGER IF EXISTS {trigger};
CREATE TRIGGER {trigger} AFTER INSERT ON {table} BEGIN
  INSERT INTO _sqlite2pg_changes (tbl, {slots}, at) VALUES ({id}, {new_key}, julianday('now'));
END;

-- @key_delete  A row went: its key.
DROP TRIGGER IF EXISTS {trigger};
CREATE TRIGGER {trigger} AFTER DELETE ON {table} BEGIN
  INSERT INTO _sqlite2pg_changes (tbl, {slots}, at) VALUES ({id}, {old_key}, julianday('now'));
END;

-- @key_update  A row changed: its (new) key.
DROP TRIGGER IF EXISTS {trigger};
CREATE TRIGGER {trigger} AFTER UPDATE ON {table} BEGIN
  INSERT INTO _sqlite2pg_changes (tbl, {slots}, at) VALUES ({id}, {new_key}, julianday('now'));
END;

-- @key_moved  Only an UPDATE that sets a key column can move a row to another key; its old key
-- is recorded by a trigger that ordinary updates never fire.
DROP TRIGGER IF EXISTS {trigger};
CREATE TRIGGER {trigger} AFTER UPDATE OF {key_columns} ON {table} WHEN {key_changed} BEGIN
  INSERT INTO _sqlite2pg_changes (tbl, {slots}, at) VALUES ({id}, {old_key}, julianday('now'));
END;

-- @key_evicts  A REPLACE (or UPSERT) deletes rows holding the same UNIQUE value without firing
-- their DELETE trigger (unless the app enabled recursive_triggers): record their keys first.
-- {event} is INSERT, or UPDATE OF the unique columns with {when} " WHEN" one of them changes
-- (empty for INSERT, and plain UPDATE for a table with a partial UNIQUE index, which a row
-- enters when any column its WHERE reads changes); {holders} is one @key_holder per UNIQUE index.
DROP TRIGGER IF EXISTS {trigger};
CREATE TRIGGER {trigger} BEFORE {event} ON {table}{when} BEGIN
  {holders}
END;

-- @key_holder  The keys of rows holding the new row's values of one UNIQUE index ({match}:
-- t."u" = NEW."u" AND ...; {t_key}: t."a", t."b").
INSERT INTO _sqlite2pg_changes (tbl, {slots}, at) SELECT {id}, {t_key}, julianday('now') FROM {table} AS t WHERE {match};

-- @image  For tables without a usable primary key: one changelog row (k1 = rowid, k2 = +1 when
-- the row appeared, -1 when it went) and, under the same seq, the row's whole image in
-- {images} (typeless columns {image_columns}, storage classes kept). {alias} is NEW or OLD.
INSERT INTO _sqlite2pg_changes (tbl, k1, k2, at) VALUES ({id}, {alias}.{rowid}, {sign}, julianday('now'));
INSERT INTO {images} (seq, {image_columns}) VALUES ((SELECT max(seq) FROM _sqlite2pg_changes), {values});

-- @image_evicted  Rows noted by @image_holders that are gone now were evicted by a REPLACE:
-- record them as having left.
INSERT INTO _sqlite2pg_changes (tbl, k1, k2, at) SELECT {id}, e.rid, -1, julianday('now') FROM {evicted} e
  WHERE NOT EXISTS (SELECT 1 FROM {table} x WHERE x.{rowid} = e.rid) ORDER BY e.rid;
INSERT INTO {images} (seq, {image_columns}) SELECT c.seq, {evicted_values} FROM {evicted} e JOIN _sqlite2pg_changes c
  ON c.tbl = {id} AND c.k1 = e.rid AND c.k2 = -1 AND c.seq > coalesce((SELECT max(seq) FROM {images}), 0);
DELETE FROM {evicted};

-- @image_deleted  A row whose DELETE trigger fires is recorded by it. With recursive_triggers
-- on, SQLite fires it for the rows a REPLACE evicts too: such a row leaves the noted holders,
-- or @image_evicted would record it leaving twice (and Postgres lose an identical row).
DELETE FROM {evicted} WHERE rid = OLD.{rowid};

-- @image_holders  Before a write: note the rows holding the new values of any UNIQUE index
-- ({match}); every write clears the scratch first, so a candidate left by a skipped
-- INSERT OR IGNORE never reaches the AFTER trigger. {extra} keeps an UPDATE's own row out.
DELETE FROM {evicted};
INSERT INTO {evicted} (rid, {image_columns}) SELECT x.{rowid}, {x_values} FROM {table} x WHERE ({match}){extra};

-- @trigger  One trigger of a table followed by row images ({body}: the image, eviction and
-- holder sections above, as the event needs).
DROP TRIGGER IF EXISTS {trigger};
CREATE TRIGGER {trigger} {event} ON {table} BEGIN
  {body}
END;

-- @drop  A trigger this table no longer needs.
DROP TRIGGER IF EXISTS {trigger};
