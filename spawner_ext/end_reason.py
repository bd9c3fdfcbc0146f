"""Why a usage session ended: the words the ledger, the policies, the reports and the UI share.

A leaf module (it imports nothing of gpuhub), so pure policies and the ledger can both use it."""

from __future__ import annotations

import enum


class EndReason(enum.StrEnum):
    """Why a usage session ended."""

    STOPPED = "stopped"  # by the user or an admin
    CULLED_IDLE = "culled-idle"
    CULLED_GPU_IDLE = "culled-gpu-idle"
    MAX_AGE = "max-age"
    BUDGET = "budget"
    FAILED = "failed"  # never started
    NODE_LOST = "node-lost"  # its pod vanished behind the hub's back
    RECONCILED = "reconciled"  # found gone by reconciliation (e.g. after a hub crash)
    RECLAIMED = "reclaimed"  # a borrowed server, stopped to give its GPUs back
    SPLIT = "split"  # the server ran on: a borrowed server became an own one here
