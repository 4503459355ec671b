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
    # A join-table-like table without a primary key, duplicates included.
    tags = op.create_table("tags", sa.Column("item_id", sa.Integer), sa.Column("tag", sa.String(10)))
    op.bulk_insert(tags, [{"item_id": i % 50, "tag": f"t{i % 3}"} for i in range(200)])
    op.bulk_insert(items, [{"id": i, "name": f"item {i}", "qty": i % 7, "legacy": f"old {i}"} for i in range(1, 301)])
