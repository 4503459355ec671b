-- @fence  The cutover fence: while it is up, every write of the app to a replicated table
-- fails with {message}, naming where the data went. One per table and event
-- ({event}: INSERT, UPDATE, DELETE), all raised in one transaction.
DROP TRIGGER IF EXISTS {trigger};
CREATE TRIGGER {trigger} BEFORE {event} ON {table} BEGIN
  SELECT RAISE(ABORT, '{message}');
END;
