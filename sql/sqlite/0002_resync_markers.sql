-- Format 2 (sqlite2pg 0.2.0), no new table:
-- * a changelog row with tbl = -id (and no key) asks for table id to be re-synchronized:
--   a migration rebuilt or redefined it, so changes may have bypassed the changelog;
-- * _sqlite2pg_meta keeps each captured table's CREATE TABLE text as 'definition:<id>', to
--   notice such changes even when no daemon ran;
-- * tables without a usable primary key are captured with whole-row images in
--   _sqlite2pg_img_<id> (and _sqlite2pg_ev_<id> for REPLACE evictions), made per table.
-- A 0.1.0 binary would skip the markers silently, which is why this is a format of its own.
SELECT 1;
