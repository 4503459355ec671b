-- @fence  The cutover fence: while the lease in _sqlite2pg_fence holds (or once it is
-- permanent), every write of the app to a replicated table fails with {message}, naming where
-- the data went. One per table and event ({event}: INSERT, UPDATE, DELETE), all raised in one
-- transaction. When the lease runs out, the triggers stay but let writes through.
DROP TRIGGER IF EXISTS {trigger};
CREATE TRIGGER {trigger} BEFORE {event} ON {table}
WHEN EXISTS (SELECT 1 FROM _sqlite2pg_fence WHERE permanent = 1 OR until > julianday('now'))
BEGIN
  SELECT RAISE(ABORT, '{message}');
END;
