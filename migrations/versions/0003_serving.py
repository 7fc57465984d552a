"""serving: allocations name their area and replicas; one endpoint row per serving allocation

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('allocations') as batch:
        batch.add_column(sa.Column('area', sa.String(length=64), nullable=True))
        batch.add_column(
            sa.Column('replicas', sa.Integer(), nullable=False, server_default='0')
        )
    op.create_table('endpoints',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('allocation_id', sa.Integer(), nullable=False),
    sa.Column('area', sa.String(length=64), nullable=False),
    sa.Column('url', sa.String(length=256), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('replicas', sa.Integer(), nullable=False),
    sa.Column('min_replicas', sa.Integer(), nullable=False),
    sa.Column('max_replicas', sa.Integer(), nullable=False),
    sa.Column('requests', sa.Integer(), nullable=False),
    sa.Column('tokens', sa.Integer(), nullable=False),
    sa.Column('errors', sa.Integer(), nullable=False),
    sa.Column('request_rate', sa.Float(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['allocation_id'], ['allocations.id'], name=op.f('fk_endpoints_allocation_id_allocations')),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_endpoints_job_id_jobs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_endpoints')),
    sa.UniqueConstraint('allocation_id', name=op.f('uq_endpoints_allocation_id'))
    )
    op.create_index('ix_endpoints_job', 'endpoints', ['job_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_endpoints_job', table_name='endpoints')
    op.drop_table('endpoints')
    with op.batch_alter_table('allocations') as batch:
        batch.drop_column('replicas')
        batch.drop_column('area')
