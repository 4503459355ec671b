"""Alembic environment for the schema-change tests: the app's own migrations, in batch mode,
run on the connection the caller passes (so the app can write on it straight after)."""
from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
