"""Decision traces, cards, feedback, JWT replay cache.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "decision",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("hook_instance", sa.String(128), nullable=False, index=True),
        sa.Column("service", sa.String(128), nullable=False),
        sa.Column("hook", sa.String(64), nullable=False),
        sa.Column("ruleset", sa.String(64), nullable=False),
        sa.Column("patient", sa.String(80), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("trace", sa.JSON, nullable=False),
    )
    op.create_table(
        "card",
        sa.Column("uuid", sa.String(40), primary_key=True),
        sa.Column("decision_id", sa.Integer, sa.ForeignKey("decision.id", ondelete="CASCADE"), nullable=False,
                  index=True),
        sa.Column("service", sa.String(128), nullable=False),
        sa.Column("rule", sa.String(32), nullable=False, index=True),
        sa.Column("rule_version", sa.String(32), nullable=False),
        sa.Column("indicator", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
    )
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("card_uuid", sa.String(40), nullable=False, index=True),
        sa.Column("service", sa.String(128), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("outcome_timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("override_system", sa.String(200)),
        sa.Column("override_code", sa.String(100)),
        sa.Column("override_display", sa.String(200)),
        sa.Column("has_comment", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("accepted_suggestions", sa.JSON, nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("card_uuid", "outcome", "outcome_timestamp", name="uq_feedback_item"),
    )
    op.create_index("ix_feedback_received", "feedback", ["received_at"])
    op.create_table(
        "seen_token",
        sa.Column("iss", sa.String(255), primary_key=True),
        sa.Column("jti", sa.String(255), primary_key=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False, index=True),
    )


def downgrade() -> None:
    op.drop_table("seen_token")
    op.drop_index("ix_feedback_received", "feedback")
    op.drop_table("feedback")
    op.drop_table("card")
    op.drop_table("decision")
