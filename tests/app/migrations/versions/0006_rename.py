"""Rename the table."""
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade():
    op.rename_table("items", "goods")
