"""the same tables on Postgres, from the app's Postgres tree: native uuid, interval, jsonb and
an enum type (the revision ids differ from SQLite's tree, as each database has its own)"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = "91e2b8f3d6a4"
down_revision = None

STATES = ("SCHEDULED", "PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED")


def upgrade():
    op.create_table(
        "flow",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("name", sa.String, nullable=False, unique=True),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
    )
    op.create_table(
        "flow_run",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("flow_id", sa.Uuid, sa.ForeignKey("flow.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String, nullable=False),
        sa.Column("state_type", postgresql.ENUM(*STATES, name="state_type"), nullable=True),
        sa.Column("total_run_time", sa.Interval, nullable=False, server_default="0"),
        sa.Column("start_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("parameters", postgresql.JSONB, nullable=False, server_default="{}"),
        sa.Column("tags", postgresql.JSONB, nullable=False, server_default="[]"),
    )
    op.create_index("ix_flow_run__state_type", "flow_run", ["state_type"])
    op.create_table(
        "automation_bucket",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("automation_id", sa.Uuid, nullable=False),
        sa.Column("trigger_id", sa.Uuid, nullable=False),
        sa.Column("bucketing_key", postgresql.JSONB, nullable=False),
        sa.Column("count", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_index("uq_automation_bucket__automation_id__trigger_id__bucketing_key", "automation_bucket",
                    ["automation_id", "trigger_id", "bucketing_key"], unique=True)


def downgrade():
    op.drop_table("automation_bucket")
    op.drop_table("flow_run")
    op.drop_table("flow")
    postgresql.ENUM(name="state_type").drop(op.get_bind())
