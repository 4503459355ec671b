"""flows, flow runs and automation buckets on SQLite: SQLAlchemy's portable types as SQLite
keeps them (Uuid as CHAR(32), Interval as DATETIME, JSON as text, Enum as VARCHAR under a
CHECK), with the server defaults the orchestrator's own migrations give"""
from alembic import op
import sqlalchemy as sa

revision = "27d8f4e1a6c9"
down_revision = None

STATES = ("SCHEDULED", "PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED")


def upgrade():
    op.create_table(
        "flow",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("name", sa.String, nullable=False, unique=True),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("CURRENT_TIMESTAMP")),
    )
    op.create_table(
        "flow_run",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("flow_id", sa.Uuid, sa.ForeignKey("flow.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String, nullable=False),
        sa.Column("state_type", sa.Enum(*STATES, name="state_type", create_constraint=True), nullable=True),
        sa.Column("total_run_time", sa.Interval, nullable=False, server_default="0"),
        sa.Column("start_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("parameters", sa.JSON, nullable=False, server_default="{}"),
        sa.Column("tags", sa.JSON, nullable=False, server_default="[]"),
    )
    op.create_index("ix_flow_run__state_type", "flow_run", ["state_type"])
    op.create_table(
        "automation_bucket",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("automation_id", sa.Uuid, nullable=False),
        sa.Column("trigger_id", sa.Uuid, nullable=False),
        sa.Column("bucketing_key", sa.JSON, nullable=False),
        sa.Column("count", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_index("uq_automation_bucket__automation_id__trigger_id__bucketing_key", "automation_bucket",
                    ["automation_id", "trigger_id", "bucketing_key"], unique=True)


def downgrade():
    op.drop_table("automation_bucket")
    op.drop_table("flow_run")
    op.drop_table("flow")
