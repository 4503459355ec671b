"""Add a column with a server default (the rebuild fills existing rows with it)."""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade():
    with op.batch_alter_table("items", recreate="always") as b:
        b.add_column(sa.Column("note", sa.Text, nullable=False, server_default="none"))
