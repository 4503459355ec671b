"""Add an index and a unique constraint."""
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade():
    with op.batch_alter_table("items", recreate="always") as b:
        b.create_index("ix_items_qty", ["qty"])
        b.create_unique_constraint("uq_items_name", ["name"])
