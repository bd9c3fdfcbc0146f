"""The gpuhub service's client of JupyterHub's REST API: the users with running servers (page by
page, with each server's state when the token has `admin:server_state`), one user's groups,
starting a server and stopping one.
Requests run concurrently up to `concurrency` (tornado's client queues the rest)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

PAGINATION = "application/jupyterhub-pagination+json"
PAGE_SIZE = 200


class HubAPIError(RuntimeError):
    """The hub answered with an error, or did not answer; the message says which call."""


class ServerUnknown(HubAPIError):
    """The hub knows no such user or server (404)."""


class StartRefused(HubAPIError):
    """The hub refused to start a server (400: the spawn's own refusal, or it already runs)."""


class HubBusy(HubAPIError):
    """The hub asks to come back later (429: `concurrent_spawn_limit` spawns are pending)."""


@dataclass(frozen=True)
class HubServer:
    """One running (or starting, or stopping) server as the hub lists it."""

    user: str
    name: str
    ready: bool
    pending: str | None
    state: Mapping[str, Any]
    """Spawner state; empty without the `admin:server_state` scope."""
    last_activity: str | None
    started: str | None = None

    @classmethod
    def from_model(cls, user: str, name: str, server: Mapping[str, Any]) -> HubServer:
        """From the server model of JupyterHub's REST API."""
        return cls(
            user=user,
            name=name,
            ready=bool(server.get("ready")),
            pending=server.get("pending"),
            state=server.get("state") or {},
            last_activity=server.get("last_activity"),
            started=server.get("started"),
        )


class HubAPI:
    def __init__(
        self,
        api_url: str,
        token: str,
        *,
        concurrency: int = 10,
        timeout: float = 30.0,
        page_size: int = PAGE_SIZE,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.page_size = page_size
        self._token = token
        self._timeout = timeout
        self._client = AsyncHTTPClient(force_instance=True, max_clients=concurrency)

    async def _request(
        self, method: str, path: str, *, accept: str = "application/json", body: Any = None
    ) -> tuple[int, Any]:
        request = HTTPRequest(
            f"{self.api_url}{path}",
            method=method,
            headers={
                "Authorization": f"token {self._token}",
                "Accept": accept,
                "Content-Type": "application/json",
            },
            body=None if body is None else json.dumps(body),
            allow_nonstandard_methods=True,
            request_timeout=self._timeout,
        )
        try:
            response = await self._client.fetch(request)
        except HTTPClientError as exc:
            text = exc.response.body.decode(errors="replace")[:1000] if exc.response else ""
            if exc.code == 404:
                raise ServerUnknown(f"{method} {path}: 404 {text}") from None
            raise HubAPIError(f"{method} {path}: {exc.code} {text}") from None
        except OSError as exc:
            raise HubAPIError(f"{method} {path}: the hub does not answer ({exc})") from None
        data = json.loads(response.body) if response.body else None
        return response.code, data

    async def users(self, **filters: str) -> AsyncIterator[Mapping[str, Any]]:
        """Every user matching `filters` (e.g. state="active"), a page at a time: the first
        page says how many there are, and the other pages are then asked for at once."""
        first = await self._page(filters, 0)
        items, pagination = first
        for user in items:
            yield user
        total = int(pagination.get("total") or 0) if pagination else 0
        if not pagination or not items or not pagination.get("next"):
            return
        if total:
            # the hub may cap the page size (api_page_max_limit): step by what it gave
            offsets = range(len(items), total, len(items))
            pages = await asyncio.gather(*(self._page(filters, o) for o in offsets))
            for more, _ in pages:
                for user in more:
                    yield user
            return
        offset = int(pagination["next"]["offset"])  # no total given: one page after another
        while True:
            more, pagination = await self._page(filters, offset)
            for user in more:
                yield user
            following = (pagination or {}).get("next")
            if not following or not more:
                return
            offset = int(following["offset"])

    async def _page(
        self, filters: Mapping[str, str], offset: int
    ) -> tuple[list[Mapping[str, Any]], Mapping[str, Any] | None]:
        query = urlencode({**filters, "offset": offset, "limit": self.page_size})
        _, page = await self._request("GET", f"/users?{query}", accept=PAGINATION)
        if isinstance(page, dict):
            return list(page.get("items", [])), page.get("_pagination") or {}
        return list(page or []), None

    async def user(self, name: str) -> Mapping[str, Any]:
        """One user's model (name, and groups with `read:users:groups`). Raises ServerUnknown
        when the hub has no such user, HubAPIError otherwise."""
        _, model = await self._request("GET", f"/users/{quote(name, safe='')}")
        return dict(model or {})

    async def running_servers(self) -> list[HubServer]:
        """Every server the hub has running, starting or stopping."""
        found = []
        async for user in self.users(state="active"):
            for name, server in (user.get("servers") or {}).items():
                found.append(HubServer.from_model(user["name"], name, server))
        return found

    async def stop_server(self, user: str, server_name: str) -> None:
        """Ask the hub to stop a server (it answers at once; the stop goes on in the hub).
        Raises ServerUnknown when the hub has no such running server, HubAPIError otherwise."""
        path = f"/users/{quote(user, safe='')}/server"
        if server_name:
            path += f"s/{quote(server_name, safe='')}"
        try:
            await self._request("DELETE", path)
        except HubAPIError as exc:
            if " 400 " in f" {exc} " and "not running" in str(exc):
                raise ServerUnknown(str(exc)) from None
            raise

    async def start_server(self, user: str, server_name: str, options: Mapping[str, str]) -> int:
        """Ask the hub to start a server with these user options (the request body, as a spawn
        through the REST API takes them). Returns 201 (started) or 202 (still starting: the hub
        goes on). Raises StartRefused (400, with the hub's message), HubBusy (429),
        ServerUnknown (no such user), HubAPIError otherwise."""
        path = f"/users/{quote(user, safe='')}/server"
        if server_name:
            path += f"s/{quote(server_name, safe='')}"
        try:
            status, _ = await self._request("POST", path, body=dict(options))
        except HubAPIError as exc:
            text = str(exc)
            if f"POST {path}: 429 " in text:
                raise HubBusy(text) from None
            if f"POST {path}: 400 " in text:
                raise StartRefused(_hub_message(text)) from None
            raise
        return status

    def close(self) -> None:
        self._client.close()


def _hub_message(error: str) -> str:
    """The `message` of the hub's JSON error inside a HubAPIError's text, else the text."""
    start = error.find("{")
    if start >= 0:
        try:
            body = json.loads(error[start:])
        except ValueError:
            return error
        if isinstance(body, dict) and body.get("message"):
            return str(body["message"])
    return error
