-- Format 4 (sqlite2pg 0.4.0): the settings a migration was started with, kept with its state.
-- A `--cast` decides how the first `run` wrote each row; `verify`, `cutover`, the reverse
-- stream and `fallback` must read and write the rows the same way without being told again.
-- One row per setting (`casts`: a JSON array of {table, column, type, encoding}), written once
-- when the stream starts, removed with the schema by `uninstall`.
CREATE TABLE sqlite2pg.setting (
  name text PRIMARY KEY,
  value jsonb NOT NULL,
  recorded_at timestamptz NOT NULL DEFAULT now()
);
