"""Drop a column."""
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade():
    with op.batch_alter_table("items") as b:
        b.drop_column("legacy")
