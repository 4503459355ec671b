-- Format 2 (sqlite2pg 0.2.0):
-- * a changelog row with tbl = -id (and no key) asks for table id to be re-synchronized:
--   a migration rebuilt or redefined it, so changes may have bypassed the changelog;
-- * _sqlite2pg_meta keeps each captured table's CREATE TABLE text as 'definition:<id>', to
--   notice such changes even when no daemon ran;
-- * tables without a usable primary key are captured with whole-row images in
--   _sqlite2pg_img_<id> (and _sqlite2pg_ev_<id> for REPLACE evictions), made per table;
-- * keys wider than four columns add k5, k6, ... to the changelog;
-- * the cutover fence is a lease (below).
-- A 0.1.0 binary would skip the markers silently, which is why this is a format of its own.

-- The fence holds while `until` (a julian day) is in the future: the cutover that raised it
-- renews it every second, so a cutover that dies or hangs gives the app its writes back by
-- itself. `permanent` = 1 once the cutover is recorded: writes belong to Postgres then.
CREATE TABLE IF NOT EXISTS _sqlite2pg_fence (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  holder TEXT NOT NULL,
  since REAL NOT NULL,
  until REAL NOT NULL,
  permanent INTEGER NOT NULL DEFAULT 0
);
