"""items: the table later migrations change."""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade():
    items = op.create_table(
        "items",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(20), nullable=False),
        sa.Column("qty", sa.Integer),
        sa.Column("legacy", sa.Text),
    )
    op.bulk_insert(items, [{"id": i, "name": f"item {i}", "qty": i % 7, "legacy": f"old {i}"} for i in range(1, 301)])
