"""Starting a server whose turn in line came: the gpuhub service asks the hub, through its REST
API, to start it with the request's user options and the request's id (option `waitlist`, so
that admission uses exactly that request's hold). Used by the service's tick and by the
wait-list API (a person's "start now")."""

from __future__ import annotations

import logging

from ..ledger.waitlist import WaitlistLedger, WaitRequest
from ..policy.request import WAITLIST_OPTION
from .hubapi import HubAPI, HubAPIError, HubBusy, StartRefused

log = logging.getLogger("gpuhub.service")


async def start_request(hub: HubAPI, ledger: WaitlistLedger, request: WaitRequest) -> bool:
    """Ask the hub to start `request`'s server. True when the hub took it (201 or 202). A
    refusal is recorded on the request (it is asked again until its hold runs out, then it
    fails with that message); a busy hub (429) or one that does not answer is asked again at
    the next tick, the hold kept meanwhile."""
    options = {**request.options, WAITLIST_OPTION: request.id}
    try:
        await hub.start_server(request.user, request.server_name, options)
    except HubBusy:
        log.info("service: the hub is busy; starting %s at the next tick", _name(request))
        return False
    except StartRefused as exc:
        log.warning("service: the hub refused to start %s: %s", _name(request), exc)
        ledger.start_failed(request.id, str(exc))
        return False
    except HubAPIError as exc:
        log.warning("service: could not ask the hub to start %s: %s", _name(request), exc)
        return False
    return True


def _name(request: WaitRequest) -> str:
    return f"{request.user}/{request.server_name} (wait-list request {request.id})"
