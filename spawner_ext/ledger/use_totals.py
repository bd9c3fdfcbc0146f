"""Every session's GPU use summed per team and GPU type, for the service's metrics: GPU-seconds
busy and GPU-seconds whose utilisation was measured (ledger table session_gpu_use, which only
grows as reports arrive). Reads only."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, func, literal, select

from .engine import READ_ONLY
from .models import UTILIZATION_COLUMNS, SessionGPUUse, UsageSession


@dataclass(frozen=True)
class UseTotal:
    team: str | None
    gpu_type: str | None
    busy_gpu_seconds: int
    """GPU-seconds above the culling threshold."""
    measured_gpu_seconds: int
    """GPU-seconds whose utilisation the reports measured (the sessions' GPUs times the seconds
    with a known utilisation)."""


def use_totals(engine: Engine) -> list[UseTotal]:
    u, s = SessionGPUUse, UsageSession
    measured = sum((u.__table__.c[name] for name in UTILIZATION_COLUMNS), literal(0))
    query = (
        select(
            s.team,
            s.gpu_type,
            func.sum(u.busy_gpu_seconds),
            func.sum(measured * s.gpu_count),
        )
        .join(s, s.id == u.session_id)
        .group_by(s.team, s.gpu_type)
    )
    with engine.execution_options(**{READ_ONLY: True}).connect() as connection:
        return [
            UseTotal(team, gpu_type, int(busy or 0), int(measured_seconds or 0))
            for team, gpu_type, busy, measured_seconds in connection.execute(query)
        ]
