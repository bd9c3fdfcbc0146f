"""The wait-list API under /services/gpu-usage/api/v1/waitlist: join the line for a GPU profile,
follow one's requests (a team's, for its leads), cancel, and start a request whose GPU is held.
Authenticated as the report API is (a JupyterHub login or API token). A join is resolved as a
spawn would be (policy/request.py), so whatever a spawn refuses is refused here with the spawn's
own message; order, holds and turns are the ledger's (ledger/waitlist.py).

Who may do what: a person joins, reads, cancels and starts their own requests. A token with
JupyterHub's `servers` scope for a user (admins have it for every user) may do so for that user.
A team's leads (and whoever reads every team's usage) read the team's requests, without changing
them."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tornado import web

from ..catalog import Catalog
from ..install import LOCAL
from ..ledger.waitlist import STARTS, JoinRequest, WaitlistError, WaitRequest
from ..policy.identity import Identity
from ..policy.request import WAITLIST_OPTION, SpawnPlan, SpawnRefused, resolve_spawn
from ..reports.access import Access, refused
from .app import GPUHubService
from .hubapi import HubAPIError, ServerUnknown
from .reports_api import APIHandler
from .waitlist_starts import start_request

log = logging.getLogger("gpuhub.service")

JOIN_FIELDS = ("user", "server_name", "profile", "options", "team", "start")
MAX_SERVER_NAME = 255


class BadJoin(ValueError):
    """A join's body is wrong; the message says what."""


@dataclass(frozen=True)
class Join:
    """A join's body, checked: whose server, the spawn's options (profile and team in them)
    and how to start at the turn."""

    user: str
    server_name: str
    options: Mapping[str, Any]
    start: str


def parse_join(body: Any, caller: str) -> Join:
    """The body of POST waitlist -> a Join, or BadJoin. `user` defaults to `caller`; top-level
    `profile` and `team` are copied into `options` (a different value there is an error).
    Pure."""
    if not isinstance(body, dict):
        raise BadJoin("the body must be a JSON object")
    unknown = sorted(set(body) - set(JOIN_FIELDS))
    if unknown:
        raise BadJoin(f"unknown field {unknown[0]!r}; the fields are {', '.join(JOIN_FIELDS)}")
    user = body.get("user", caller)
    if not isinstance(user, str) or not user:
        raise BadJoin("'user' must be a JupyterHub user name")
    server_name = body.get("server_name", "")
    if not isinstance(server_name, str) or len(server_name) > MAX_SERVER_NAME:
        raise BadJoin("'server_name' must be a string ('' for the default server)")
    if "/" in server_name or any(ord(c) < 32 for c in server_name):
        raise BadJoin(f"'server_name' {server_name!r} may not hold '/' or control characters")
    options = body.get("options")
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise BadJoin(
            "'options' must be a JSON object of the spawn's options, such as "
            '{"profile": "h100-single", "image": "pytorch"}'
        )
    if WAITLIST_OPTION in options:
        raise BadJoin(f"option {WAITLIST_OPTION!r} is set by the service; leave it out")
    options = dict(options)
    for name in ("profile", "team"):
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise BadJoin(f"'{name}' must be a string")
        if name in options and options[name] != value:
            raise BadJoin(
                f"'{name}' is {value!r} but options.{name} is {options[name]!r}; give one, or "
                "the same in both"
            )
        options[name] = value
    start = body.get("start", "ask")
    if start not in STARTS:
        raise BadJoin(
            f"'start' must be 'auto' (start my server as soon as it is my turn) or 'ask' "
            f"(hold the GPU and ask me first), not {start!r}"
        )
    return Join(user=user, server_name=server_name, options=options, start=start)


def may_act_for(model: Mapping[str, Any], user: str) -> bool:
    """Whether the token behind `model` may join, cancel and start for `user`: their own, or
    with JupyterHub's `servers` scope for them (what starting their server takes; admins have
    it unfiltered)."""
    if model.get("kind", "user") == "user" and model.get("name") == user:
        return True
    scopes = set(model.get("scopes") or [])
    return bool(scopes & {"servers", f"servers!user={user}"})


def may_read(model: Mapping[str, Any], access: Access, request: WaitRequest) -> bool:
    """Whether the asker may read `request`: one they may act for, or one of a team whose usage
    they read (its leads; admins)."""
    return may_act_for(model, request.user) or access.may_read(request.team)


def with_plan(options: Mapping[str, Any], plan: SpawnPlan) -> dict[str, str]:
    """The options a request starts its server with: the join's, with the resolved profile and
    team written in (so a later change of the person's teams or the default profile cannot
    change what they waited for)."""
    out = {str(k): str(v) for k, v in options.items()}
    out["profile"] = plan.profile.slug
    if plan.team is not None:
        out["team"] = plan.team
    return out


class WaitlistAPIHandler(APIHandler):
    """The asker, their identity for a spawn, and the wait-list's errors as JSON."""

    def caller(self) -> tuple[dict[str, Any], Access]:
        access = self.access()  # 403 without a login or token
        return self.get_current_user(), access

    @property
    def catalog(self) -> Catalog:
        return self.service.store.catalog

    def body_json(self) -> Any:
        try:
            return json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, "the body must be JSON") from None

    async def identity(self, model: Mapping[str, Any], user: str) -> Identity:
        """`user` as a spawn sees them: the asker from their login, anyone else from the hub
        (their groups decide their teams)."""
        if model.get("kind", "user") == "user" and model.get("name") == user:
            return Identity(user, frozenset(model.get("groups") or ()), bool(model.get("admin")))
        try:
            other = await self.service.hub.user(user)
        except ServerUnknown:
            raise web.HTTPError(400, f"there is no JupyterHub user {user!r}") from None
        except HubAPIError as exc:
            log.warning("waitlist: could not read user %s from the hub: %s", user, exc)
            raise web.HTTPError(502, "the hub did not answer; try again") from None
        return Identity(user, frozenset(other.get("groups") or ()), bool(other.get("admin")))

    def plan(self, who: Identity, options: Mapping[str, Any]) -> SpawnPlan:
        """The spawn these options would make for `who`, or 400 with the spawn's refusal (or
        because a profile without GPUs needs no line)."""
        try:
            plan = resolve_spawn(
                self.catalog, who, dict(options), install=self.service.install or LOCAL
            )
        except SpawnRefused as exc:
            raise web.HTTPError(400, exc.message) from None
        if not plan.gpu_count or plan.gpu_type_key is None:
            raise web.HTTPError(
                400,
                f"profile {plan.profile.slug!r} needs no GPU: start it directly, no need to wait",
            )
        if plan.team is None:
            raise web.HTTPError(400, "a GPU profile is charged to a team; you are in none")
        return plan

    def mine(self, model: Mapping[str, Any], access: Access, uid: str) -> WaitRequest:
        """The request `uid` if the asker may read it; 404 otherwise (another's request is not
        told apart from none)."""
        found = self.service.ledger().get(self.catalog, uid)
        if found is None or not may_read(model, access, found):
            raise web.HTTPError(404, f"no wait-list request {uid!r} of yours")
        return found

    def acting(self, model: Mapping[str, Any], request: WaitRequest) -> None:
        if not may_act_for(model, request.user):
            raise web.HTTPError(
                403,
                f"request {request.id} is {request.user}'s: you may follow it, not change it",
            )

    def written(self, request: WaitRequest, status: int = 200) -> None:
        self.set_status(status)
        self.write_json(request.as_json())


def _server(request: WaitRequest) -> str:
    return f"{request.user}/{request.server_name}"


def _failed(exc: WaitlistError) -> web.HTTPError:
    return web.HTTPError(exc.status, str(exc))


class WaitlistHandler(WaitlistAPIHandler):
    """POST api/v1/waitlist (join), GET api/v1/waitlist[?team=T] (live requests)."""

    async def post(self) -> None:
        model, _ = self.caller()
        body = self.body_json()
        if model.get("kind", "user") != "user" and "user" not in body:
            raise web.HTTPError(400, "a service's token must name the 'user' to join for")
        try:
            join = parse_join(body, str(model.get("name", "")))
        except BadJoin as exc:
            raise web.HTTPError(400, str(exc)) from None
        if not may_act_for(model, join.user):
            raise web.HTTPError(
                403,
                f"you may join the line only for yourself, not for {join.user!r} (admins may "
                "for anyone)",
            )
        plan = self.plan(await self.identity(model, join.user), join.options)
        assert plan.gpu_type_key is not None and plan.team is not None
        ledger = self.service.ledger()
        try:
            joined = ledger.join(
                self.catalog,
                JoinRequest(
                    user=join.user,
                    server_name=join.server_name,
                    team=plan.team,
                    profile=plan.profile.slug,
                    gpu_type=plan.gpu_type_key,
                    gpu_count=plan.gpu_count,
                    options=with_plan(join.options, plan),
                    start=join.start,
                ),
            )
        except WaitlistError as exc:
            raise _failed(exc) from None
        if joined.state == "starting":  # a GPU was free and it starts at once
            await start_request(self.service.hub, ledger, joined)
            joined = ledger.get(self.catalog, joined.id) or joined
        self.service.wake()  # its estimate and everyone's places within a tick
        self.written(joined, 201)

    def get(self) -> None:
        model, access = self.caller()
        params = self.params()
        unknown = sorted(set(params) - {"team"})
        if unknown:
            raise web.HTTPError(400, f"unknown parameter {unknown[0]!r}; the only one is team")
        team = self.get_query_argument("team", "")
        ledger = self.service.ledger()
        if not team:
            found = ledger.requests(self.catalog, user=str(model.get("name", "")))
        else:
            if team not in self.catalog.teams:
                known = ", ".join(sorted(self.catalog.teams))
                raise web.HTTPError(400, f"team={team!r} is not a team; teams: {known}")
            if not access.may_read(team):
                raise web.HTTPError(403, str(refused(access, f"the wait-list of team {team!r}")))
            found = ledger.requests(self.catalog, team=team)
        self.write_json({"requests": [r.as_json() for r in found]})


class PreviewHandler(WaitlistAPIHandler):
    """GET api/v1/waitlist/preview?options=JSON&server=NAME: the place and estimate a join of
    these options would get now (the wait-list page's join box)."""

    async def get(self) -> None:
        model, _ = self.caller()
        try:
            options = json.loads(self.get_query_argument("options", "{}") or "{}")
        except ValueError:
            raise web.HTTPError(400, "options must be a JSON object") from None
        try:
            join = parse_join(
                {"options": options, "server_name": self.get_query_argument("server", "")},
                str(model.get("name", "")),
            )
        except BadJoin as exc:
            raise web.HTTPError(400, str(exc)) from None
        plan = self.plan(await self.identity(model, join.user), join.options)
        assert plan.gpu_type_key is not None and plan.team is not None
        place, when = self.service.ledger().preview(
            self.catalog, plan.team, join.user, plan.gpu_type_key, plan.gpu_count
        )
        kind = self.catalog.gpu_types[plan.gpu_type_key]
        self.write_json(
            {
                "position": place,
                "estimated_start": when.isoformat().replace("+00:00", "Z") if when else None,
                "server_name": join.server_name,
                "team": plan.team,
                "profile": plan.profile.slug,
                "profile_name": plan.profile.display_name,
                "gpu_type": plan.gpu_type_key,
                "gpu_type_name": kind.display_name,
                "gpu_count": plan.gpu_count,
                "options": with_plan(join.options, plan),
            }
        )


class RequestHandler(WaitlistAPIHandler):
    """GET / DELETE api/v1/waitlist/{id}."""

    def get(self, uid: str) -> None:
        model, access = self.caller()
        self.written(self.mine(model, access, uid))

    async def delete(self, uid: str) -> None:
        model, access = self.caller()
        before = self.mine(model, access, uid)
        self.acting(model, before)
        try:
            final = self.service.ledger().cancel(self.catalog, uid)
        except WaitlistError as exc:
            raise _failed(exc) from None
        if before.live and final.state == "cancelled" and final.start_asked_at is not None:
            # cancelled after its start was asked for: the server must not run on
            try:
                await self.service.hub.stop_server(final.user, final.server_name)
            except ServerUnknown:
                pass  # nothing runs
            except HubAPIError as exc:
                # The cancel stands; the service's tick stops the server (every tick until it
                # is gone: ledger.cancelled_but_running), e.g. once a pending spawn finishes.
                log.warning("waitlist: could not stop %s yet: %s", _server(final), exc)
        self.service.wake()
        self.written(final)


class StartHandler(WaitlistAPIHandler):
    """POST api/v1/waitlist/{id}/start: start the server of an "ask" request whose GPU is held."""

    async def post(self, uid: str) -> None:
        model, access = self.caller()
        before = self.mine(model, access, uid)
        self.acting(model, before)
        ledger = self.service.ledger()
        try:
            asked = ledger.ask_start(self.catalog, uid)
        except WaitlistError as exc:
            raise _failed(exc) from None
        if before.state == "held" and asked.state == "starting":
            # asked now (a request already starting was asked before; the tick asks again)
            await start_request(self.service.hub, ledger, asked)
            asked = ledger.get(self.catalog, uid) or asked
        self.service.wake()
        self.written(asked)


def waitlist_handlers(prefix: str, service: GPUHubService) -> list[Any]:
    args = {"service": service}
    return [
        (rf"{prefix}api/v1/waitlist", WaitlistHandler, args),
        (rf"{prefix}api/v1/waitlist/preview", PreviewHandler, args),
        (rf"{prefix}api/v1/waitlist/([^/]+)", RequestHandler, args),
        (rf"{prefix}api/v1/waitlist/([^/]+)/start", StartHandler, args),
    ]
