"""One culling cycle over many running servers through a real JupyterHub's REST API: gpuhub's
culler (`Culler.cycle`: the users' pages at once, 200 per page, the ledger's sessions and GPU
reports in one query each, decisions) beside stock jupyterhub-idle-culler 2.0 (`cull_idle`), in
one run, on the same hub and the same servers: every server active, so neither stops anything and
each cycle is the listing and the deciding. Stock runs twice: with `--api-page-size=200` (the page
size gpuhub uses, the hub's maximum) and with its default (the hub's default page size, 50); it
asks for its pages one after another either way, as it does.

The hub runs in a process of its own with a spawner that starts no process (its servers answer
from one stub HTTP server in the hub) and a proxy that keeps routes in memory; the ledger has a
running session with a fresh "GPU busy" report for each server. Printed: the median of 3 cycles
each at 1,000, 5,000 and 10,000 servers, the ratio gpuhub / stock, the cost per server (linear
growth: flat), and the listing alone both ways: gpuhub's (`HubAPI.running_servers`) and
idle-culler's paging (its requests, without its deciding), at both page sizes. The cases take
turns within each round, so drift in the machine's load falls on all of them alike.
Target: ours faster than stock, and linear.

Run: .venv/bin/python -m benchmarks.culling_cycle [--servers 1000 5000 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from jupyterhub.proxy import Proxy
from jupyterhub.spawner import Spawner
from sqlalchemy import insert
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.httputil import url_concat

from spawner_ext.catalog import load_catalog
from spawner_ext.clock import utcnow
from spawner_ext.ledger.engine import upgrade
from spawner_ext.ledger.models import ServerActivity, UsageSession
from spawner_ext.ledger.store import Ledger
from spawner_ext.service.culler import Culler
from spawner_ext.service.hubapi import PAGE_SIZE, HubAPI
from spawner_ext.up import free_port

ROOT = Path(__file__).parents[1]
REPEAT = 3
HUB_DEFAULT_PAGE = 50
"""JupyterHub's api_page_default_limit (unset here, as in z2jh): stock idle-culler's page size
when `--api-page-size` is not given."""

# --- inside the hub process ------------------------------------------------------------------


class _Answer(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        from jupyterhub import __version__

        self.send_response(200)
        self.send_header("X-JupyterHub-Version", __version__)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: Any) -> None:
        pass


_STUB: list[int] = []


def _stub_port() -> int:
    if not _STUB:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        _STUB.append(server.server_address[1])
    return _STUB[0]


class StubSpawner(Spawner):  # type: ignore[misc]
    """A server that is only a URL: starts at once, always running, stops at once."""

    async def start(self) -> tuple[str, int]:
        return ("127.0.0.1", _stub_port())

    async def poll(self) -> int | None:
        return None if self.server else 0

    async def stop(self, now: bool = False) -> None:
        return None


class MemoryProxy(Proxy):  # type: ignore[misc]
    """Routes in a dict: the benchmark measures the hub's API, not a proxy."""

    should_start = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.routes: dict[str, dict[str, Any]] = {}

    async def add_route(self, routespec: str, target: str, data: dict[str, Any]) -> None:
        self.routes[routespec] = {"routespec": routespec, "target": target, "data": data}

    async def delete_route(self, routespec: str) -> None:
        self.routes.pop(routespec, None)

    async def get_all_routes(self) -> dict[str, dict[str, Any]]:
        return dict(self.routes)


HUB_CONFIG = """
c.JupyterHub.spawner_class = "benchmarks.culling_cycle.StubSpawner"
c.JupyterHub.proxy_class = "benchmarks.culling_cycle.MemoryProxy"
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {port}
c.JupyterHub.db_url = "sqlite:///{state}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{state}/cookie_secret"
c.JupyterHub.concurrent_spawn_limit = 0
c.JupyterHub.cleanup_servers = False
c.JupyterHub.active_server_limit = 0
c.JupyterHub.log_level = "WARN"
c.JupyterHub.authenticator_class = "null"
c.JupyterHub.services = [{{"name": "bench", "api_token": {token!r}}}]
c.JupyterHub.load_roles = [{{
    "name": "bench",
    "scopes": ["admin:users", "admin:servers", "admin:server_state", "list:users",
               "read:users:activity", "read:servers", "delete:servers"],
    "services": ["bench"],
}}]
c.Spawner.http_timeout = 60
c.Spawner.start_timeout = 60
"""


# --- in the benchmark process ----------------------------------------------------------------


class Bench:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.token = "bench-" + os.urandom(8).hex()
        self.api = f"http://127.0.0.1:{self.port}/hub/api"
        config = workdir / "jupyterhub_config.py"
        config.write_text(HUB_CONFIG.format(port=self.port, state=workdir, token=self.token))
        self.log = (workdir / "hub.log").open("w")
        self.hub = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(config)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.client = AsyncHTTPClient(force_instance=True, max_clients=50)
        self.url = f"sqlite:///{workdir / 'ledger.sqlite'}"
        upgrade(self.url)
        self.ledger = Ledger.open(self.url)
        self.running = 0

    async def call(self, method: str, path: str, body: str | None = None) -> int:
        request = HTTPRequest(
            self.api + path,
            method=method,
            headers={"Authorization": f"token {self.token}"},
            body=body,
            allow_nonstandard_methods=True,
            request_timeout=120,
        )
        response = await self.client.fetch(request, raise_error=False)
        return int(response.code)

    async def wait_up(self) -> None:
        for _ in range(300):
            try:
                if await self.call("GET", "/") == 200:
                    return
            except OSError:  # not listening yet
                pass
            if self.hub.poll() is not None:
                break
            await asyncio.sleep(0.2)
        raise RuntimeError(f"the hub did not start; see {self.workdir / 'hub.log'}")

    async def grow(self, servers: int) -> None:
        """Users and running servers up to `servers`, with their ledger sessions."""
        names = [f"u{n:05d}" for n in range(self.running, servers)]
        for i in range(0, len(names), 1000):
            code = await self.call("POST", "/users", json.dumps({"usernames": names[i : i + 1000]}))
            assert code == 201, code
        semaphore = asyncio.Semaphore(50)

        async def spawn(name: str) -> None:
            async with semaphore:
                code = await self.call("POST", f"/users/{name}/server", "{}")
                assert code in (201, 202), (name, code)

        await asyncio.gather(*(spawn(n) for n in names))
        now = utcnow()
        rows = [
            {
                "user": name,
                "team": "vision",
                "server_name": "",
                "profile": "h100-single",
                "gpu_type": "h100-80gb",
                "gpu_count": 1,
                "price_per_hour": Decimal("4.10"),
                "currency": "USD",
                "requested_at": now - timedelta(hours=1),
                "started_at": now - timedelta(hours=1),
                "last_seen_at": now,
                "catalog_version": "bench",
            }
            for name in names
        ]
        with self.ledger.engine.begin() as db:
            first = db.execute(insert(UsageSession).returning(UsageSession.id), rows).all()
            db.execute(
                insert(ServerActivity),
                [
                    {
                        "session_id": row.id,
                        "reported_at": now,
                        "gpu_activity": "busy",
                        "kernel_busy": True,
                        "idle_gpu_seconds": 0,
                        "samples": "[]",
                    }
                    for row in first
                ],
            )
        self.running = servers

    def close(self) -> None:
        self.hub.terminate()
        try:
            self.hub.wait(30)
        except subprocess.TimeoutExpired:
            self.hub.kill()
            self.hub.wait(30)
        self.log.close()
        self.ledger.engine.dispose()
        self.client.close()


Timed = Callable[[], Awaitable[None]]


def ours_listing(bench: Bench, servers: int) -> Timed:
    """gpuhub's listing alone: `HubAPI.running_servers` (200 per page, the pages at once)."""

    async def once() -> None:
        hub = HubAPI(bench.api, bench.token)
        try:
            listed = await hub.running_servers()
        finally:
            hub.close()
        assert len(listed) == servers, len(listed)

    return once


def stock_paging(bench: Bench, servers: int, page_size: int) -> Timed:
    """jupyterhub-idle-culler 2.0's listing alone, the requests its `cull_idle` makes without its
    deciding: GET / (the hub's version), then GET /users?state=ready (with `limit` when
    --api-page-size is given) with the pagination Accept header, each page asked for when the
    one before has told the next one's URL, each page's JSON decoded (its `fetch_paginated`)."""

    async def once() -> None:
        client = AsyncHTTPClient(force_instance=True, defaults={"request_timeout": 60})
        headers = {"Authorization": f"token {bench.token}"}
        try:
            await client.fetch(HTTPRequest(f"{bench.api}/", headers=headers))
            params = {"limit": str(page_size)} if page_size else {}
            url: str | None = url_concat(f"{bench.api}/users", {**params, "state": "ready"})
            paging = {**headers, "Accept": "application/jupyterhub-pagination+json"}
            found = 0
            while url is not None:
                response = await client.fetch(HTTPRequest(url, headers=paging))
                page = json.loads(response.body.decode("utf8", "replace"))
                found += sum(len(user["servers"]) for user in page["items"])
                following = page["_pagination"]["next"]
                url = following["url"] if following else None
        finally:
            client.close()
        assert found == servers, found

    return once


def ours_cycle(bench: Bench, servers: int) -> Timed:
    catalog = load_catalog(ROOT / "hub_config" / "catalog.yaml")

    async def once() -> None:
        hub = HubAPI(bench.api, bench.token)
        culler = Culler(hub, bench.ledger)
        try:
            considered = await culler.cycle(catalog, utcnow())
        finally:
            hub.close()
        assert len(considered) == servers, len(considered)
        assert not culler.status.culled, "nothing is culled: every server is busy"

    return once


def stock_cycle(bench: Bench, page_size: int) -> Timed:
    """Stock idle-culler's cycle as z2jh runs it (timeout 3600), `page_size` 0: its default."""
    from jupyterhub_idle_culler import cull_idle

    logger = logging.getLogger("stock-culler")
    logger.setLevel(logging.WARNING)

    async def once() -> None:
        await cull_idle(
            url=bench.api,
            api_token=bench.token,
            inactive_limit=3600,
            logger=logger,
            api_page_size=page_size,
        )

    return once


CASES = (
    "gpuhub",
    "stock 200",
    "stock default",
    "listing gpuhub",
    "paging 200",
    "paging default",
)


async def time_cases(bench: Bench, servers: int, repeat: int) -> dict[str, float]:
    """Case -> median seconds of `repeat` runs; each round runs every case once, the order
    turned by one each round."""
    runs: dict[str, Timed] = {
        "gpuhub": ours_cycle(bench, servers),
        "stock 200": stock_cycle(bench, PAGE_SIZE),
        "stock default": stock_cycle(bench, 0),
        "listing gpuhub": ours_listing(bench, servers),
        "paging 200": stock_paging(bench, servers, PAGE_SIZE),
        "paging default": stock_paging(bench, servers, 0),
    }
    times: dict[str, list[float]] = {case: [] for case in CASES}
    for round_ in range(repeat):
        order = CASES[round_ % len(CASES) :] + CASES[: round_ % len(CASES)]
        for case in order:
            start = time.perf_counter()
            await runs[case]()
            times[case].append(time.perf_counter() - start)
    return {case: statistics.median(values) for case, values in times.items()}


async def run(counts: Sequence[int], repeat: int) -> list[tuple[int, dict[str, float]]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpuhub-cull-") as tmp:
        bench = Bench(Path(tmp))
        try:
            await bench.wait_up()
            for servers in counts:
                start = time.perf_counter()
                await bench.grow(servers)
                print(
                    f"  {servers:,} servers running ({time.perf_counter() - start:.0f} s), "
                    f"load {os.getloadavg()[0]:.2f}",
                    file=sys.stderr,
                    flush=True,
                )
                medians = await time_cases(bench, servers, repeat)
                print(
                    "  " + ", ".join(f"{case} {medians[case]:.2f} s" for case in CASES),
                    file=sys.stderr,
                    flush=True,
                )
                rows.append((servers, medians))
        finally:
            bench.close()
    return rows


def _table(header: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.culling_cycle")
    parser.add_argument("--servers", type=int, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument("--repeat", type=int, default=REPEAT, help="cycles per case (median)")
    args = parser.parse_args(argv)
    from jupyterhub import __version__ as jupyterhub_version

    load_before = os.getloadavg()[0]
    rows = asyncio.run(run(args.servers, args.repeat))
    load_after = os.getloadavg()[0]
    print(f"Culling cycle, {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC")
    print(
        f"machine {platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"JupyterHub {jupyterhub_version}; load average (1 min) before {load_before:.2f}, "
        f"after {load_after:.2f}"
    )
    print(
        f"median of {args.repeat} cycles; every server active (nothing culled); gpuhub: "
        f"{PAGE_SIZE} per page, pages at once; stock idle-culler 2.0: pages one after another, "
        f"{PAGE_SIZE} per page (--api-page-size={PAGE_SIZE}) or its default (the hub's "
        f"{HUB_DEFAULT_PAGE})\n"
    )
    s = "stock idle-culler"
    _table(
        [
            "servers",
            "gpuhub s",
            f"{s}, {PAGE_SIZE} per page s",
            f"{s}, default ({HUB_DEFAULT_PAGE} per page) s",
            f"gpuhub / stock ({PAGE_SIZE})",
            f"gpuhub / stock ({HUB_DEFAULT_PAGE})",
            "gpuhub µs per server",
            f"stock ({PAGE_SIZE}) µs per server",
            f"stock ({HUB_DEFAULT_PAGE}) µs per server",
        ],
        [
            [
                f"{n:,}",
                f"{t['gpuhub']:.2f}",
                f"{t['stock 200']:.2f}",
                f"{t['stock default']:.2f}",
                f"{t['gpuhub'] / t['stock 200']:.2f}x",
                f"{t['gpuhub'] / t['stock default']:.2f}x",
                f"{t['gpuhub'] / n * 1e6:.0f}",
                f"{t['stock 200'] / n * 1e6:.0f}",
                f"{t['stock default'] / n * 1e6:.0f}",
            ]
            for n, t in rows
        ],
    )
    print("\nThe listing alone, each culler's own way, and each cycle beyond its listing:\n")
    _table(
        [
            "servers",
            f"gpuhub's listing ({PAGE_SIZE} per page, at once) s",
            f"idle-culler's paging, {PAGE_SIZE} per page s",
            f"idle-culler's paging, {HUB_DEFAULT_PAGE} per page s",
            "gpuhub's listing / idle-culler's (200)",
            "gpuhub beyond its listing µs per server",
            f"stock ({PAGE_SIZE}) beyond its paging µs per server",
            f"stock ({HUB_DEFAULT_PAGE}) beyond its paging µs per server",
        ],
        [
            [
                f"{n:,}",
                f"{t['listing gpuhub']:.2f}",
                f"{t['paging 200']:.2f}",
                f"{t['paging default']:.2f}",
                f"{t['listing gpuhub'] / t['paging 200']:.2f}x",
                f"{(t['gpuhub'] - t['listing gpuhub']) / n * 1e6:.0f}",
                f"{(t['stock 200'] - t['paging 200']) / n * 1e6:.0f}",
                f"{(t['stock default'] - t['paging default']) / n * 1e6:.0f}",
            ]
            for n, t in rows
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
