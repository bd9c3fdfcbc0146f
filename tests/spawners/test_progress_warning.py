"""The budget warning of an admitted spawn leads its progress messages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from spawner_ext.spawners.mixin import GPUSpawnerMixin


class Base:
    """Stands in for the concrete spawner under the mixin: its own progress events."""

    async def progress(self) -> AsyncIterator[dict[str, Any]]:
        yield {"progress": 50, "message": "pod scheduled"}


class Spawner(GPUSpawnerMixin, Base):
    pass


async def events(spawner: Spawner) -> list[str]:
    return [event["message"] async for event in spawner.progress()]


async def test_warning_comes_first() -> None:
    spawner = Spawner()
    spawner.admission_warning = "team 'vision' has used 85% of its 2000 GPU-hours this month"
    assert await events(spawner) == [
        "Budget warning: team 'vision' has used 85% of its 2000 GPU-hours this month",
        "pod scheduled",
    ]


async def test_no_warning_no_extra_event() -> None:
    assert await events(Spawner()) == ["pod scheduled"]
