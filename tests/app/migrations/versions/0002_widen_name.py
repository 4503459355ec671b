"""Alter a column type: name VARCHAR(20) -> VARCHAR(50) (batch mode rebuilds the table); the
same for a table without a primary key."""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade():
    with op.batch_alter_table("items") as b:
        b.alter_column("name", type_=sa.String(50), existing_type=sa.String(20), existing_nullable=False)
    with op.batch_alter_table("tags") as b:
        b.alter_column("tag", type_=sa.String(40), existing_type=sa.String(10))
