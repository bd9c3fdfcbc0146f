"""One culling cycle over many running servers through a real JupyterHub's REST API: gpuhub's
culler (`Culler.cycle`: the users' pages at once, the ledger's sessions and GPU reports in one
query each, decisions) beside stock jupyterhub-idle-culler 2.0 (`cull_idle`), in one run, on the
same hub and the same servers: every server active, so neither stops anything and each cycle is
the listing and the deciding.

The hub runs in a process of its own with a spawner that starts no process (its servers answer
from one stub HTTP server in the hub) and a proxy that keeps routes in memory; the ledger has a
running session with a fresh "GPU busy" report for each server. Printed: the median of 3 cycles
each at 1,000, 5,000 and 10,000 servers, the cost per server (linear growth: flat), and the
hub's own share: listing the servers through its REST API alone, which both cullers pay.
Target: ours faster than stock, and linear.

Run: .venv/bin/python -m benchmarks.culling_cycle [--servers 1000 5000 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from jupyterhub.proxy import Proxy
from jupyterhub.spawner import Spawner
from sqlalchemy import insert
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from spawner_ext.catalog import load_catalog
from spawner_ext.clock import utcnow
from spawner_ext.ledger.engine import upgrade
from spawner_ext.ledger.models import ServerActivity, UsageSession
from spawner_ext.ledger.store import Ledger
from spawner_ext.service.culler import Culler
from spawner_ext.service.hubapi import HubAPI
from spawner_ext.up import free_port

ROOT = Path(__file__).parents[1]
REPEAT = 3

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
        import json

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


async def time_listing(bench: Bench) -> list[float]:
    """The hub's share: listing every running server through the REST API (what both pay)."""
    hub = HubAPI(bench.api, bench.token)
    times = []
    for _ in range(REPEAT):
        start = time.perf_counter()
        await hub.running_servers()
        times.append(time.perf_counter() - start)
    hub.close()
    return times


async def time_ours(bench: Bench, servers: int) -> list[float]:
    catalog = load_catalog(ROOT / "hub_config" / "catalog.yaml")
    hub = HubAPI(bench.api, bench.token)
    culler = Culler(hub, bench.ledger)
    times = []
    for _ in range(REPEAT):
        start = time.perf_counter()
        considered = await culler.cycle(catalog, utcnow())
        times.append(time.perf_counter() - start)
        assert len(considered) == servers, len(considered)
        assert not culler.status.culled, "nothing is culled: every server is busy"
    hub.close()
    return times


async def time_stock(bench: Bench) -> list[float]:
    from jupyterhub_idle_culler import cull_idle

    logger = logging.getLogger("stock-culler")
    logger.setLevel(logging.WARNING)
    times = []
    for _ in range(REPEAT):
        start = time.perf_counter()
        await cull_idle(url=bench.api, api_token=bench.token, inactive_limit=3600, logger=logger)
        times.append(time.perf_counter() - start)
    return times


async def run(counts: Sequence[int]) -> list[tuple[int, float, float, float]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpuhub-cull-") as tmp:
        bench = Bench(Path(tmp))
        try:
            await bench.wait_up()
            for servers in counts:
                start = time.perf_counter()
                await bench.grow(servers)
                print(
                    f"  {servers:,} servers running ({time.perf_counter() - start:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
                ours = statistics.median(await time_ours(bench, servers))
                stock = statistics.median(await time_stock(bench))
                listing = statistics.median(await time_listing(bench))
                print(
                    f"  ours {ours:.2f} s, stock {stock:.2f} s, listing {listing:.2f} s",
                    file=sys.stderr,
                    flush=True,
                )
                rows.append((servers, ours, stock, listing))
        finally:
            bench.close()
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.culling_cycle")
    parser.add_argument("--servers", type=int, nargs="+", default=[1000, 5000, 10000])
    args = parser.parse_args(argv)
    rows = asyncio.run(run(args.servers))
    load = os.getloadavg()[0]
    print(f"Culling cycle, {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, load {load:.2f}")
    print(f"median of {REPEAT} cycles; every server active (nothing culled)\n")
    header = ["servers", "gpuhub s", "stock idle-culler 2.0 s", "stock / gpuhub"]
    header += ["gpuhub µs per server", "stock µs per server", "hub listing alone s"]
    header += ["gpuhub beyond the listing, µs per server"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for servers, ours, stock, listing in rows:
        print(
            f"| {servers:,} | {ours:.2f} | {stock:.2f} | {stock / ours:.1f}x | "
            f"{ours / servers * 1e6:.0f} | {stock / servers * 1e6:.0f} | {listing:.2f} | "
            f"{max(ours - listing, 0) / servers * 1e6:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
