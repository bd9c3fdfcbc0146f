"""What a stop tells billing: a server that ran until the stop is billed until now (and may
correct an earlier end reconciliation recorded); one already gone when the stop began is billed
until it was last seen (tests/ledger/test_service_metering.py has the ledger's side)."""

from __future__ import annotations

import pytest

from spawner_ext.end_reason import EndReason
from spawner_ext.spawners.mixin import GPUSpawnerMixin


class Base:
    """Stands in for the concrete spawner under the mixin: a server alive or not."""

    _log_name = "ada"  # as JupyterHub's Spawner names it in logs
    status: int | Exception | None = None
    stopped = False

    async def poll(self) -> int | None:
        if isinstance(self.status, Exception):
            raise self.status
        return self.status

    async def stop(self, now: bool = False) -> None:
        self.stopped = True


class Spawner(GPUSpawnerMixin, Base):
    ended: list[tuple[EndReason, bool]]

    async def metering_ended(
        self, reason: EndReason = EndReason.STOPPED, *, found_gone: bool = False
    ) -> None:
        self.ended.append((reason, found_gone))


@pytest.mark.parametrize(
    ("status", "found_gone"),
    [(None, False), (0, True), (OSError("API server unreachable"), False)],
    ids=["running", "already-gone", "cannot-tell"],
)
async def test_a_stop_says_whether_the_server_ran_until_it(
    status: int | Exception | None, found_gone: bool
) -> None:
    spawner = Spawner()
    spawner.status, spawner.ended = status, []
    await spawner.stop()
    assert spawner.stopped and not spawner.stopping
    assert spawner.ended == [(EndReason.STOPPED, found_gone)]
