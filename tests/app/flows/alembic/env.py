"""Alembic environment of the flows app: online, on the URL the caller sets; the caller picks
the version tree of the URL's database (one per database, as the app's real model has)."""
from alembic import context
from sqlalchemy import create_engine

engine = create_engine(context.config.get_main_option("sqlalchemy.url"))
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None, render_as_batch=engine.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()
