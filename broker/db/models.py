"""SQLAlchemy 2.0 typed models: the whole data model of DESIGN §3.

Every change here comes with an Alembic revision in ``migrations/versions``; a test checks
that autogenerate finds no difference between these models and the migrated schema.

Conventions: money is ``Numeric(18, 6)`` dollars (``Decimal`` in Python); times are
timezone-aware UTC (``UTCDateTime`` restores the zone that SQLite drops); an offer's
missing zone is stored as ``''`` so the natural key stays unique on every database.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from broker.domain import as_utc, utcnow

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else as_utc(value)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else as_utc(value)


Money = Numeric(18, 6)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


# --- supply -----------------------------------------------------------------------------


class OfferRow(Base):
    __tablename__ = "offers"
    __table_args__ = (
        UniqueConstraint("provider", "region", "zone", "instance_type", "pricing"),
        Index("ix_offers_gpu_pricing_price", "gpu", "pricing", "price_per_hour"),
        Index("ix_offers_provider_region", "provider", "region"),
        Index("ix_offers_price", "price_per_hour"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provider: Mapped[str] = mapped_column(String(32))
    region: Mapped[str] = mapped_column(String(64))
    zone: Mapped[str] = mapped_column(String(64), default="")
    instance_type: Mapped[str] = mapped_column(String(128))
    gpu: Mapped[str | None] = mapped_column(String(64))  # canonical name; None: CPU only
    gpu_known: Mapped[bool] = mapped_column(Boolean, default=True)  # False: name kept as given
    gpus_per_node: Mapped[int] = mapped_column(Integer, default=0)
    gpu_memory_gib: Mapped[float | None] = mapped_column(Float)
    vcpus: Mapped[int | None] = mapped_column(Integer)
    memory_gib: Mapped[float | None] = mapped_column(Float)
    pricing: Mapped[str] = mapped_column(String(16))  # broker.domain.Pricing
    price_per_hour: Mapped[Decimal | None] = mapped_column(Money)  # None: unknown, not free
    interconnect_gbps: Mapped[float | None] = mapped_column(Float)
    rdma: Mapped[str] = mapped_column(String(16), default="none")  # broker.domain.Fabric
    nvlink: Mapped[bool] = mapped_column(Boolean, default=False)
    capacity_nodes: Mapped[int | None] = mapped_column(Integer)  # None: unknown
    source: Mapped[str] = mapped_column(String(128))
    as_of: Mapped[datetime | None] = mapped_column(UTCDateTime)  # date of the source's price
    fetched_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    stale: Mapped[bool] = mapped_column(Boolean, default=False)

    observations: Mapped[list[PriceObservationRow]] = relationship(
        back_populates="offer", cascade="all, delete-orphan", passive_deletes=True
    )


class PriceObservationRow(Base):
    __tablename__ = "price_observations"
    __table_args__ = (Index("ix_price_observations_offer_time", "offer_id", "observed_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    offer_id: Mapped[int] = mapped_column(ForeignKey("offers.id", ondelete="CASCADE"))
    price: Mapped[Decimal] = mapped_column(Money)
    observed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    offer: Mapped[OfferRow] = relationship(back_populates="observations")


class QuotaRow(Base):
    __tablename__ = "quotas"
    __table_args__ = (UniqueConstraint("provider", "region", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provider: Mapped[str] = mapped_column(String(32))
    region: Mapped[str] = mapped_column(String(64))  # "global" for project-wide quotas
    name: Mapped[str] = mapped_column(String(128))  # the provider's quota code or metric
    scope: Mapped[str] = mapped_column(String(64))  # GPU family, vCPU class or "all"
    unit: Mapped[str] = mapped_column(String(16), default="gpus")  # gpus | vcpus
    pricing: Mapped[str | None] = mapped_column(String(16))  # None: applies to all
    limit: Mapped[float] = mapped_column(Float)
    used: Mapped[float] = mapped_column(Float, default=0.0)
    fetched_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PoolCooldownRow(Base):
    """A pool that just said OutOfCapacity (or lost a node) is avoided until ``until``."""

    __tablename__ = "pool_cooldowns"
    __table_args__ = (Index("ix_pool_cooldowns_until", "until"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provider: Mapped[str] = mapped_column(String(32))
    region: Mapped[str] = mapped_column(String(64))
    zone: Mapped[str] = mapped_column(String(64), default="")
    instance_type: Mapped[str | None] = mapped_column(String(128))  # None: the whole zone
    reason: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    until: Mapped[datetime] = mapped_column(UTCDateTime)


# --- demand and plans -------------------------------------------------------------------


class JobRow(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state", "state"), Index("ix_jobs_team", "team"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))  # broker.domain.JobKind
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    team: Mapped[str] = mapped_column(String(64), default="default")
    priority: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16))  # broker.domain.JobState
    deadline: Mapped[datetime | None] = mapped_column(UTCDateTime)
    budget: Mapped[Decimal | None] = mapped_column(Money)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    message: Mapped[str | None] = mapped_column(Text)  # last error or unplaced reason
    version: Mapped[int] = mapped_column(Integer, default=1)  # optimistic lock
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    allocations: Mapped[list[AllocationRow]] = relationship(back_populates="job")
    __mapper_args__ = {"version_id_col": version}


class PlanRow(Base):
    __tablename__ = "plans"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    solver: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(32))
    objective: Mapped[Decimal | None] = mapped_column(Money)
    lp_bound: Mapped[Decimal | None] = mapped_column(Money)
    gap: Mapped[float | None] = mapped_column(Float)
    solve_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    validated: Mapped[bool] = mapped_column(Boolean, default=False)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # unplaced, explain
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    allocations: Mapped[list[AllocationRow]] = relationship(back_populates="plan")


class AllocationRow(Base):
    __tablename__ = "allocations"
    __table_args__ = (Index("ix_allocations_state", "state"), Index("ix_allocations_job", "job_id"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    plan_id: Mapped[int] = mapped_column(ForeignKey("plans.id"))
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    offer_id: Mapped[int | None] = mapped_column(ForeignKey("offers.id", ondelete="SET NULL"))
    # The pool is copied from the offer so the allocation survives an offer's removal.
    provider: Mapped[str] = mapped_column(String(32))
    region: Mapped[str] = mapped_column(String(64))
    zone: Mapped[str] = mapped_column(String(64), default="")
    instance_type: Mapped[str] = mapped_column(String(128))
    pricing: Mapped[str] = mapped_column(String(16))
    gpu: Mapped[str | None] = mapped_column(String(64))
    gpus_per_node: Mapped[int] = mapped_column(Integer, default=0)
    nodes: Mapped[int] = mapped_column(Integer)
    price_at_plan: Mapped[Decimal | None] = mapped_column(Money)  # per node-hour
    est_hours: Mapped[float] = mapped_column(Float)
    est_cost: Mapped[Decimal] = mapped_column(Money)
    # Serving: the user area this allocation answers, and the replicas its nodes hold.
    area: Mapped[str | None] = mapped_column(String(64))
    replicas: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16))  # broker.domain.AllocationState
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    plan: Mapped[PlanRow] = relationship(back_populates="allocations")
    job: Mapped[JobRow] = relationship(back_populates="allocations")
    instances: Mapped[list[InstanceRow]] = relationship(back_populates="allocation")
    __mapper_args__ = {"version_id_col": version}


class InstanceRow(Base):
    """One node. The row, with its request id, is written before the cloud is called."""

    __tablename__ = "instances"
    __table_args__ = (
        UniqueConstraint("request_id", "node_index"),
        Index("ix_instances_state", "state"),
        Index("ix_instances_provider_instance", "provider", "provider_instance_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    allocation_id: Mapped[int] = mapped_column(ForeignKey("allocations.id"))
    provider: Mapped[str] = mapped_column(String(32))
    region: Mapped[str] = mapped_column(String(64))
    zone: Mapped[str] = mapped_column(String(64), default="")
    instance_type: Mapped[str] = mapped_column(String(128))
    pricing: Mapped[str] = mapped_column(String(16))
    request_id: Mapped[str] = mapped_column(String(64))  # idempotency key of the launch
    node_index: Mapped[int] = mapped_column(Integer, default=0)
    provider_instance_id: Mapped[str | None] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16))  # broker.domain.InstanceState
    address: Mapped[str | None] = mapped_column(String(128))
    price_per_hour: Mapped[Decimal | None] = mapped_column(Money)  # at launch
    launched_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    terminated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    allocation: Mapped[AllocationRow] = relationship(back_populates="instances")


class UsageRow(Base):
    """The metered ledger: one row per instance run; every cost report sums these."""

    __tablename__ = "usage"
    __table_args__ = (Index("ix_usage_start", "start"), Index("ix_usage_job", "job_id"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id"), unique=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    team: Mapped[str] = mapped_column(String(64))
    provider: Mapped[str] = mapped_column(String(32))
    region: Mapped[str] = mapped_column(String(64))
    zone: Mapped[str] = mapped_column(String(64), default="")
    instance_type: Mapped[str] = mapped_column(String(128))
    pricing: Mapped[str] = mapped_column(String(16))
    gpu: Mapped[str | None] = mapped_column(String(64))
    gpus: Mapped[int] = mapped_column(Integer, default=0)
    start: Mapped[datetime] = mapped_column(UTCDateTime)
    end: Mapped[datetime] = mapped_column(UTCDateTime)
    price_per_hour: Mapped[Decimal] = mapped_column(Money)
    on_demand_price_per_hour: Mapped[Decimal | None] = mapped_column(Money)  # for savings
    busy_seconds: Mapped[float | None] = mapped_column(Float)  # time spent training
    cost: Mapped[Decimal] = mapped_column(Money)


class JobEventRow(Base):
    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job_ts", "job_id", "ts"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    ts: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))  # state, progress, metric, error, log
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class EndpointRow(Base):
    """One serving allocation's endpoint: where it answers, its replicas and its traffic.

    ``requests``/``tokens``/``errors`` are the totals the endpoint has counted since it
    started; ``request_rate`` is the highest rate measured over a report interval, which
    the next plan of the job uses when it exceeds the spec's figure."""

    __tablename__ = "endpoints"
    __table_args__ = (UniqueConstraint("allocation_id"), Index("ix_endpoints_job", "job_id"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    allocation_id: Mapped[int] = mapped_column(ForeignKey("allocations.id"))
    area: Mapped[str] = mapped_column(String(64))
    url: Mapped[str | None] = mapped_column(String(256))
    state: Mapped[str] = mapped_column(String(16))  # broker.domain.EndpointState
    replicas: Mapped[int] = mapped_column(Integer, default=0)
    min_replicas: Mapped[int] = mapped_column(Integer, default=1)
    max_replicas: Mapped[int] = mapped_column(Integer, default=1)
    requests: Mapped[int] = mapped_column(Integer, default=0)
    tokens: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[int] = mapped_column(Integer, default=0)
    request_rate: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


# --- money and reports ------------------------------------------------------------------


class BudgetRow(Base):
    __tablename__ = "budgets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    team: Mapped[str] = mapped_column(String(64), unique=True)
    amount: Mapped[Decimal] = mapped_column(Money)
    period: Mapped[str] = mapped_column(String(16))  # month | week
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class ReportScheduleRow(Base):
    __tablename__ = "report_schedules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cron: Mapped[str] = mapped_column(String(128))
    period: Mapped[str] = mapped_column(String(16))  # e.g. 7d
    format: Mapped[str] = mapped_column(String(8))
    out_dir: Mapped[str] = mapped_column(Text)
    webhook: Mapped[str | None] = mapped_column(Text)
    email: Mapped[str | None] = mapped_column(Text)  # comma-separated recipients
    group_by: Mapped[str] = mapped_column(String(128), default="team,provider")
    last_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ReportRow(Base):
    __tablename__ = "reports"
    # One report per schedule and due time, whichever daemon makes it.
    __table_args__ = (UniqueConstraint("schedule_id", "due_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    schedule_id: Mapped[int | None] = mapped_column(ForeignKey("report_schedules.id"))
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    period_from: Mapped[datetime] = mapped_column(UTCDateTime)
    period_to: Mapped[datetime] = mapped_column(UTCDateTime)
    format: Mapped[str] = mapped_column(String(8))
    path: Mapped[str | None] = mapped_column(Text)
    totals: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class InstallationRow(Base):
    """The one row naming this database's installation: a random id made by the migration
    that created the table. It is in every tag, request id and client token the broker
    gives a cloud, so installations sharing an account never touch each other's nodes."""

    __tablename__ = "installation"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    installation_id: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class LeaseRow(Base):
    """A named lease (e.g. the daemon leader) held by ``holder`` until ``expires_at``."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class CalibrationRow(Base):
    """Achieved training throughput measured on a device by ``gpubroker calibrate``."""

    __tablename__ = "calibrations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device: Mapped[str] = mapped_column(String(128))  # "cpu:<model>" or a canonical GPU
    gpu: Mapped[str | None] = mapped_column(String(64))  # canonical GPU, None for a CPU
    achieved_flops: Mapped[float] = mapped_column(Float)
    peak_flops: Mapped[float | None] = mapped_column(Float)
    mfu: Mapped[float | None] = mapped_column(Float)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    measured_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
