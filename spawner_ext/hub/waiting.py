"""The hub's home page's wait-list rows: each live request of the user in words ("3rd in line for
NVIDIA H100 80GB; about 40 minutes", "your GPU is held until 14:32 UTC"), with the link to the
gpuhub service's wait-list page, where it is started or cancelled. Pure: the spawner reads the
requests (WaitlistLedger.requests) and hands them in."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ..catalog import Catalog
from ..ledger.waitlist import WaitRequest
from ..policy.waitlist_text import place_words, wait_words
from ..wire import SERVICE_NAME

HELD_BACK = {
    "budget": "your team's monthly GPU budget is used up; your place is kept",
    "gpu-quota": "your team's quota of this GPU is held by its other servers; your place is kept",
    "user-cap": "you hold as many GPUs as your team allows you; stop a server to go ahead",
    "capacity": "it asks for more GPUs than there are of this type",
}
"""Why a waiting request is passed over for now, by the line's skip reason."""


@dataclass(frozen=True)
class WaitingView:
    """One live wait-list request of the user, as the home page shows it."""

    id: str
    server_name: str
    """'' for the default server."""
    profile: str
    """The profile's display name (its slug when the catalog no longer has it)."""
    state: str
    """waiting, held or starting."""
    text: str
    """'3rd in line for NVIDIA H100 80GB; about 40 minutes', 'your GPU is held until 14:32
    UTC', 'your server is starting'."""
    action: str | None
    """The link's words: 'start' while a GPU is held for the person to start, else None (the
    link then reads 'wait-list')."""
    note: str | None
    """Why the request is passed over for now, if it is."""
    url: str
    """The gpuhub service's wait-list page."""


def waitlist_url(base_url: str) -> str:
    """`{base_url}services/gpu-usage/waitlist`."""
    return f"{base_url.rstrip('/')}/services/{SERVICE_NAME}/waitlist"


def waiting_view(
    request: WaitRequest, catalog: Catalog, *, base_url: str, now: datetime
) -> WaitingView:
    """The home page's row of one live request."""
    kind = catalog.gpu_types.get(request.gpu_type)
    name = kind.display_name if kind else request.gpu_type
    if request.gpu_count > 1:
        name = f"{request.gpu_count} \N{MULTIPLICATION SIGN} {name}"
    action = None
    if request.state == "held" and request.hold_until is not None:
        text = f"your GPU is held until {request.hold_until:%H:%M} UTC"
        action = "start"
    elif request.state in ("held", "starting"):
        text = "it is your turn: your server is starting"
    elif request.position is not None:
        text = place_words(request.position, name, request.estimated_start, now)
    else:
        text = f"waiting for {name}; {wait_words(request.estimated_start, now)}"
    profile = catalog.profile(request.profile)
    note = HELD_BACK.get(request.blocked, request.blocked) if request.blocked else None
    return WaitingView(
        id=request.id,
        server_name=request.server_name,
        profile=profile.display_name if profile else request.profile,
        state=request.state,
        text=text,
        action=action,
        note=note if request.state == "waiting" else None,
        url=waitlist_url(base_url),
    )
