"""Billing database failover: a local hub (`gpuhub up`, simulated GPUs) whose ledger is on a
PostgreSQL primary with a synchronous standby (tests/pg_replica.py), a spawn storm of GPU and CPU
servers through the REST API, and the primary lost in the middle of it: killed with SIGKILL, or
(`--primary freeze`) stopped with SIGSTOP as a host that stops answering, then killed (fenced) when
the standby is promoted. The standby is promoted `--promote-after` seconds after the loss by this
script, standing in for the operator or a tool such as Patroni; nothing in gpuhub promotes.

The hub and its gpuhub service reach the ledger through a multi-host URL
(`?host=primary&host=standby&target_session_attrs=read-write&connect_timeout=2`) and are never
restarted. JupyterHub's own database is SQLite in the hub's state directory, not on the killed
server. Prints:

- admitted sessions lost: sessions the hub answered a spawn for (201/202) that the promoted
  database lacks (must be 0);
- the time from the loss to the first GPU spawn the hub admitted again;
- what users saw meanwhile: GPU spawns refused with "billing is unavailable" (and anything else),
  CPU spawns that started, and whether the servers that were running when the primary went
  (one GPU, one CPU) ran on untouched;
- the billing error per GPU server: billed seconds against the server's life as a /proc watcher
  saw it (tests/faultdriver.py), afterwards, on the promoted database.

Not a test: nothing here asserts timing (tests/integration/test_db_failover.py asserts the
correctness figures on a small storm). What the figure does not cover: the test servers run with
fsync=off, so a process kill is not a power loss; on one machine a refused connection is answered
at once, where a remote host that stops answering costs `connect_timeout` per attempt (the freeze
mode shows that part).

    .venv/bin/python -m benchmarks.failover [--gpu-users 6] [--cpu-users 3] [--primary kill]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import requests
from sqlalchemy import select
from sqlalchemy.orm import Session

from spawner_ext.ledger.models import UsageSession
from spawner_ext.ledger.store import Ledger
from spawner_ext.wire import STATE_SESSION, read_session
from tests.faultdriver import ProcessWatcher, check_billing
from tests.integration.conftest import Hub, lean_servers, needs_local_hub
from tests.pg_replica import ReplicatedPair, database_name, start_pair

ROOT = Path(__file__).resolve().parents[1]
TICK = 2  # seconds between the service's reconciliations
SLACK = 2.0  # the watcher's scans and whole-second billing (as tests/integration/test_faults.py)
TOLERANCE = TICK + SLACK
GPU = {"profile": "h100-single"}
CPU = {"profile": "cpu-small"}
BILLING_UNAVAILABLE = "billing is unavailable"
PrimaryLoss = Literal["kill", "freeze"]


@dataclass(frozen=True)
class Attempt:
    """One spawn asked through the REST API, as the person asking saw it."""

    user: str
    kind: str  # "gpu" or "cpu"
    asked: float  # monotonic seconds
    answered: float
    status: int  # HTTP status; 0: no answer
    message: str = ""
    session: str | None = None  # the admitted server's ledger session key (from its state)
    ready: bool = False

    @property
    def admitted(self) -> bool:
        """JupyterHub answers a spawn once it is ready or after `slow_spawn_timeout` (10 s);
        gpuhub admits or refuses before the server starts, so a refusal is the answer (503) and
        201/202 means admitted. (With slow_spawn_timeout 0 every answer would be 202.)"""
        return self.status in (201, 202)

    @property
    def outcome(self) -> str:
        if self.admitted:
            return "started" if self.ready else "admitted, never ready"
        if BILLING_UNAVAILABLE in self.message.lower():
            return "refused: billing is unavailable"
        return f"HTTP {self.status}: {self.message[:80]}"


@dataclass
class Storm:
    """What the workers saw, shared between their threads (appends only)."""

    attempts: list[Attempt] = field(default_factory=list)
    pings: list[tuple[float, float]] = field(default_factory=list)
    """(asked, answered) of the hub's REST API root, asked again as soon as it answers."""
    failures: list[BaseException] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class Figures:
    loss: PrimaryLoss
    promote_asked: float
    """Seconds from the loss to the promotion's start (`promoted_at` is when it was done)."""
    attempts: list[Attempt]
    lost_at: float
    promoted_at: float
    admitted: set[str]
    in_database: set[str]
    admitted_without_key: int
    pinned_untouched: dict[str, bool]
    service_recovered_after: float | None
    billing: dict[str, float] | None
    billing_problem: str | None
    pings: list[tuple[float, float]]

    @property
    def lost(self) -> set[str]:
        return self.admitted - self.in_database

    def first_gpu_admitted_after_loss(self) -> Attempt | None:
        """The first GPU spawn asked after the loss that the hub admitted."""
        after = [
            a for a in self.attempts if a.kind == "gpu" and a.admitted and a.asked > self.lost_at
        ]
        return min(after, key=lambda a: a.asked) if after else None

    def during_outage(self) -> Counter[tuple[str, str]]:
        """(kind, outcome) -> count, of the spawns asked between the loss and the first GPU
        spawn admitted again."""
        first = self.first_gpu_admitted_after_loss()
        end = first.asked if first is not None else float("inf")
        return Counter((a.kind, a.outcome) for a in self.attempts if self.lost_at <= a.asked < end)


# --- the hub ---------------------------------------------------------------------------------


def catalog_text(users: list[str]) -> str:
    """The example catalog, ticking every TICK seconds, with `users` in team nlp."""
    text = (ROOT / "hub_config" / "catalog.yaml").read_text()
    text = text.replace("reconcile_interval: 30s", f"reconcile_interval: {TICK}s")
    members = "users: [grace, lin]"
    assert members in text
    return text.replace(members, f"users: [grace, lin, {', '.join(users)}]", 1)


@contextmanager
def failover_hub(workdir: Path, url: str, users: list[str], gpus: int) -> Iterator[Hub]:
    """`gpuhub up` with `gpus` simulated H100s and its ledger at `url`; cleaned up after."""
    needs_local_hub()
    (workdir / "catalog.yaml").write_text(catalog_text(users))
    hub = Hub(
        workdir, f"{gpus}xh100-80gb", "--config", str(workdir / "catalog.yaml"), "--db-url", url
    )
    lean_servers(hub)
    try:
        hub.start()
        yield hub
    finally:
        hub.cleanup()


def server(hub: Hub, user: str) -> dict[str, Any] | None:
    """The user's default server as the hub lists it (None: none, or no answer)."""
    with suppress(requests.RequestException, ValueError, KeyError):
        response = hub.api("GET", f"/users/{user}")
        if response.status_code == 200:
            model: dict[str, Any] | None = response.json()["servers"].get("")
            return model
    return None


def spawn(hub: Hub, user: str, kind: str, ready_within: float = 90) -> Attempt:
    """Ask for the user's server; when admitted, wait until it is ready and read its session."""
    hub.ensure_user(user)
    asked = time.monotonic()
    try:
        response = hub.api("POST", f"/users/{user}/server", json=GPU if kind == "gpu" else CPU)
        status, message = response.status_code, _message(response)
    except requests.RequestException as exc:
        status, message = 0, str(exc)
    answered = time.monotonic()
    if status not in (201, 202):
        return Attempt(user, kind, asked, answered, status, message)
    deadline = time.monotonic() + ready_within
    model = server(hub, user)
    while model is not None and not model.get("ready") and time.monotonic() < deadline:
        time.sleep(0.3)
        model = server(hub, user)  # None: the spawn failed after the hub answered
    ready = bool(model and model.get("ready"))
    key = read_session((model or {}).get("state", {}).get(STATE_SESSION)) if ready else None
    return Attempt(user, kind, asked, answered, status, message, key, ready)


def _message(response: requests.Response) -> str:
    with suppress(ValueError):
        return str(response.json().get("message", ""))
    return response.text


def stop(hub: Hub, user: str, within: float = 90) -> None:
    deadline = time.monotonic() + within
    while server(hub, user) is not None and time.monotonic() < deadline:
        with suppress(requests.RequestException):
            hub.api("DELETE", f"/users/{user}/server")
        time.sleep(0.5)


def ping(hub: Hub, storm: Storm) -> None:
    """Ask the hub's REST API root every 0.1 s: how long the hub keeps a person waiting."""
    while not storm.stop.is_set():
        asked = time.monotonic()
        with suppress(requests.RequestException):
            hub.api("GET", "/")
        storm.pings.append((asked, time.monotonic()))
        time.sleep(0.1)


def work(hub: Hub, user: str, kind: str, storm: Storm, hold: tuple[float, float]) -> None:
    """Cycle the user's server (start, hold, stop) until the storm stops; a refused spawn is
    asked again half a second later, as a person pressing Start again would."""
    rng = random.Random(user)
    try:
        while not storm.stop.is_set():
            attempt = spawn(hub, user, kind)
            storm.attempts.append(attempt)
            if not attempt.admitted:
                time.sleep(0.5)
                continue
            storm.stop.wait(rng.uniform(*hold))
            stop(hub, user)
    except BaseException as exc:
        storm.failures.append(exc)


# --- the run ---------------------------------------------------------------------------------


def sessions(url: str) -> list[UsageSession]:
    ledger = Ledger.open(url)
    try:
        with Session(ledger.engine) as db:
            return list(db.scalars(select(UsageSession).order_by(UsageSession.id)))
    finally:
        ledger.engine.dispose()


def service_status(hub: Hub) -> dict[str, Any]:
    with suppress(requests.RequestException, ValueError):
        found: dict[str, Any] = requests.get(
            f"{hub.url}services/gpu-usage/api/v1/status", timeout=10
        ).json()
        return found
    return {}


def run(
    workdir: Path,
    *,
    gpu_users: int = 6,
    cpu_users: int = 3,
    loss: PrimaryLoss = "kill",
    lose_after: float = 10,
    promote_after: float = 5,
    run_after: float = 15,
    hold: tuple[float, float] = (1, 4),
) -> Figures:
    """One failover under a storm; see the module's docstring. `lose_after`: seconds of storm
    before the primary is lost; `run_after`: seconds the storm goes on after the first GPU
    spawn admitted after the promotion."""
    gpu_names = [f"g{i:02d}" for i in range(gpu_users)]
    cpu_names = [f"c{i:02d}" for i in range(cpu_users)]
    pinned = {"pinned-gpu": "gpu", "pinned-cpu": "cpu"}
    pairs = start_pair()
    pair = next(pairs)
    try:
        name = database_name("failover")
        pair.create_database(name)
        url = pair.url(name)
        users = [*gpu_names, *cpu_names, *pinned, *PROBES]
        with failover_hub(workdir, url, users, gpus=gpu_users + 2) as hub:
            return _storm(hub, pair, name, gpu_names, cpu_names, pinned, loss, lose_after,
                          promote_after, run_after, hold)  # fmt: skip
    finally:
        with suppress(StopIteration):
            next(pairs)


def _storm(
    hub: Hub,
    pair: ReplicatedPair,
    database: str,
    gpu_names: list[str],
    cpu_names: list[str],
    pinned: dict[str, str],
    loss: PrimaryLoss,
    lose_after: float,
    promote_after: float,
    run_after: float,
    hold: tuple[float, float],
) -> Figures:
    port = (hub.state_dir / "hub-port").read_text().strip()
    watcher = ProcessWatcher(f"JUPYTERHUB_API_URL=http://127.0.0.1:{port}/hub/api".encode())
    watcher.start()
    storm = Storm()
    with ThreadPoolExecutor(len(pinned)) as pool:  # running when the primary goes, and after
        started = list(pool.map(lambda item: spawn(hub, *item), pinned.items()))
    for attempt in started:
        assert attempt.ready, f"{attempt.user}'s server did not start: {attempt.outcome}"
    storm.attempts.extend(started)
    pids = {user: int(hub.user(user)["servers"][""]["state"]["pid"]) for user in pinned}
    threads = [
        threading.Thread(target=work, args=(hub, user, kind, storm, hold), daemon=True)
        for kind, names in (("gpu", gpu_names), ("cpu", cpu_names))
        for user in names
    ]
    threads.append(threading.Thread(target=ping, args=(hub, storm), daemon=True))
    for thread in threads:
        thread.start()
    time.sleep(lose_after)
    lost_at = time.monotonic()
    lost_wall = time.time()
    if loss == "kill":
        pair.kill_primary()
    else:
        pair.freeze_primary()
    probes = [
        threading.Thread(target=_probe, args=(hub, storm, user, kind), daemon=True)
        for user, kind in PROBES.items()
    ]
    for thread in probes:
        thread.start()
    time.sleep(promote_after)
    if loss == "freeze":
        pair.fence_primary()
    promote_asked = time.monotonic() - lost_at
    pair.promote_standby()
    promoted_at = time.monotonic()
    print(
        f"primary lost ({loss}); standby promoted {promoted_at - lost_at:.1f} s later", flush=True
    )
    recovered = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if recovered is None and _ticked_since(hub, lost_wall):
            recovered = time.monotonic() - lost_at
        admitted = any(
            a.kind == "gpu" and a.admitted and a.asked > promoted_at for a in storm.attempts
        )
        if admitted and recovered is not None:
            break
        time.sleep(0.3)
    time.sleep(run_after)
    storm.stop.set()
    for thread in [*threads, *probes]:
        thread.join(timeout=180)
    untouched = {
        user: pids[user] in watcher.alive() and bool((server(hub, user) or {}).get("ready"))
        for user in pinned
    }
    for user in [*pinned, *PROBES]:
        stop(hub, user)
    deadline = time.monotonic() + 60
    while watcher.alive() and time.monotonic() < deadline:
        time.sleep(0.5)
    lives = watcher.stop()
    time.sleep(3 * TICK)  # the last closes are written, by the hub or by reconciliation
    rows = sessions(pair.standby.url(database))  # the promoted server's, not through the URL
    gpu_rows = [s for s in rows if s.gpu_count]
    gpu_lives = [life for life in lives if life.devices]
    billing, problem = None, None
    try:
        billing = check_billing(gpu_rows, gpu_lives, TOLERANCE)
    except AssertionError as exc:
        problem = str(exc)
    if storm.failures:
        raise storm.failures[0]
    admitted = [a for a in storm.attempts if a.admitted]
    return Figures(
        loss=loss,
        promote_asked=promote_asked,
        attempts=storm.attempts,
        lost_at=lost_at,
        promoted_at=promoted_at,
        admitted={a.session for a in admitted if a.session},
        in_database={uuid.UUID(s.uid).hex for s in rows},
        # A CPU server started while the ledger is down starts unmetered (no session yet; the
        # service adopts it later), so only GPU spawns must carry one.
        admitted_without_key=sum(1 for a in admitted if a.kind == "gpu" and not a.session),
        pinned_untouched=untouched,
        service_recovered_after=recovered,
        billing=billing,
        billing_problem=problem,
        pings=storm.pings,
    )


PROBES = {"probe-gpu": "gpu", "probe-cpu": "cpu"}
"""Users who ask for a server from the moment the primary is lost: the GPU one every half second
until admitted (the time until GPU spawns work again), the CPU one once."""


def _probe(hub: Hub, storm: Storm, user: str, kind: str) -> None:
    try:
        while not storm.stop.is_set():
            attempt = spawn(hub, user, kind)
            storm.attempts.append(attempt)
            if attempt.admitted or kind == "cpu":
                return
            time.sleep(0.5)
    except BaseException as exc:
        storm.failures.append(exc)


def _ticked_since(hub: Hub, moment: float) -> bool:
    """Whether the gpuhub service finished a tick after `moment` (epoch seconds)."""
    last = service_status(hub).get("last_tick_at")
    return bool(last) and datetime.fromisoformat(last).timestamp() > moment


# --- the report ------------------------------------------------------------------------------


def report(figures: Figures) -> str:
    first = figures.first_gpu_admitted_after_loss()
    lines = [
        f"primary lost by {figures.loss}; standby promotion asked {figures.promote_asked:.1f} s "
        f"after, done {figures.promoted_at - figures.lost_at:.1f} s after (by this script, "
        "standing in for the operator or Patroni)",
        f"admitted sessions lost: {len(figures.lost)} of {len(figures.admitted)} "
        f"(admitted but never ready, no session key read: {figures.admitted_without_key})",
        "first GPU spawn admitted after the loss: "
        + (
            f"asked {first.asked - figures.lost_at:.1f} s after it, answered "
            f"{first.answered - figures.lost_at:.1f} s after it (the answer waits for the server "
            "to be ready, at most slow_spawn_timeout: 10 s)"
            if first is not None
            else "none"
        ),
        "the gpuhub service's first good tick after the loss: "
        + (
            f"{figures.service_recovered_after:.1f} s"
            if figures.service_recovered_after is not None
            else "none"
        ),
        "spawns asked between the loss and the first GPU spawn admitted again:",
    ]
    for (kind, outcome), count in sorted(figures.during_outage().items()):
        lines.append(f"  {kind}: {outcome}: {count}")
    lines.append(
        "servers running when the primary went, still running after: "
        + ", ".join(f"{u} {'yes' if ok else 'NO'}" for u, ok in figures.pinned_untouched.items())
    )
    stalls = [done - asked for asked, done in figures.pings if done >= figures.lost_at]
    if stalls:
        lines.append(
            f"the hub's REST API root (GET /hub/api/) after the loss: longest answer "
            f"{max(stalls):.2f} s, median {statistics.median(stalls):.2f} s"
        )
    waits = [a.answered - a.asked for a in figures.attempts if a.asked >= figures.lost_at]
    if waits:
        lines.append(
            f"REST answer to a spawn after the loss: median {statistics.median(waits):.2f} s, "
            f"max {max(waits):.2f} s"
        )
    if figures.billing is not None:
        b = figures.billing
        lines.append(
            f"billing error per GPU server ({b['servers']:.0f} servers, lived "
            f"{b['shortest_s']:.0f}-{b['longest_s']:.0f} s): max {b['max_error_s']:.1f} s, mean "
            f"{b['mean_error_s']:.2f} s, signed mean {b['mean_signed_error_s']:+.2f} s "
            f"(tick {TICK} s, bound {TOLERANCE:.0f} s)"
        )
    else:
        lines.append(f"billing check FAILED: {figures.billing_problem}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu-users", type=int, default=6)
    parser.add_argument("--cpu-users", type=int, default=3)
    parser.add_argument("--primary", choices=["kill", "freeze"], default="kill")
    parser.add_argument("--lose-after", type=float, default=10.0)
    parser.add_argument("--promote-after", type=float, default=5.0)
    parser.add_argument("--run-after", type=float, default=15.0)
    args = parser.parse_args(argv)
    print(f"machine: {platform.node()} {os.cpu_count()} CPUs, load {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="gpuhub-failover-") as workdir:
        figures = run(
            Path(workdir),
            gpu_users=args.gpu_users,
            cpu_users=args.cpu_users,
            loss=args.primary,
            lose_after=args.lose_after,
            promote_after=args.promote_after,
            run_after=args.run_after,
        )
    print(report(figures))
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
