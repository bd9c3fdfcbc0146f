"""The Jupyter server extension of a gpuhub notebook server: every few seconds it samples the
server's own GPUs through NVML, tells the gpuhub service (with the server's JupyterHub token),
and while a GPU or a kernel is busy it marks the server active, so a silent training run counts
as activity for any culler (jupyterhub-singleuser reports the server's last activity to the
hub). It serves what the service answers to JupyterLab (the culler's warning, whether Keep can
delay it, the team's budget notice, what the GPU meter shows of the session: cost, price, budget
left, deadlines) with the latest samples, keeps the last hour of its samples for the meter's
chart (GET /gpuhub/history; no NVML read of its own), and forwards Keep clicks. It reports
whether or not the service culls (`--no-culling`): the budget notice comes with the answer
either way.

Enabled by `jupyter_server_config.d/gpuhub.json` (local mode: JUPYTER_CONFIG_PATH, set by the
spawner; images: copied to /etc/jupyter). Without JupyterHub or the service URL it does nothing.
NVML absent, a GPU lost, the service down: logged once, the server runs on, retried with backoff.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.ioloop import IOLoop

from ..wire import ENV_SAMPLE_SECONDS, ENV_SERVICE_URL
from .history import SampleHistory
from .sampler import Activity, GPUSample, NVMLUnavailable, Sampler, gpu_activity
from .visible import Visible, visible_gpus

ACTIVITY_KEY = "gpuhub_last_activity"
"""web_app.settings key: jupyter_server counts every `*_last_activity` setting as activity."""
MAX_BACKOFF = 600.0


@dataclass(frozen=True)
class ReporterSettings:
    service_url: str
    """The gpuhub service's base URL, ending in '/services/gpu-usage/'."""
    token: str
    server_name: str
    interval: float
    visible: Visible

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ReporterSettings | None:
        """None when this server does not run under a gpuhub hub (nothing to report to)."""
        url, token = env.get(ENV_SERVICE_URL, ""), env.get("JUPYTERHUB_API_TOKEN", "")
        if not url or not token:
            return None
        try:
            interval = float(env.get(ENV_SAMPLE_SECONDS) or 10)
        except ValueError:
            interval = 10.0
        return cls(
            service_url=url.rstrip("/") + "/",
            token=token,
            server_name=env.get("JUPYTERHUB_SERVER_NAME", ""),
            interval=max(interval, 1.0),
            visible=visible_gpus(env),
        )


@dataclass
class ReporterState:
    """What JupyterLab is shown (GET /gpuhub/status)."""

    samples: tuple[GPUSample, ...] = ()
    activity: Activity = Activity.NONE
    threshold: int = 5
    warning: dict[str, Any] | None = None
    budget: dict[str, Any] | None = None
    """The team's budget notice (policy/notices.py), None below its warning threshold."""
    session: dict[str, Any] | None = None
    """What the GPU meter shows of the server's session (the service's `session_body`)."""
    nvml_error: str | None = None
    service_error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "gpus": [asdict(s) for s in self.samples],
            "activity": self.activity.value,
            "warning": self.warning,
            "budget": self.budget,
            "session": self.session,
            "nvml_error": self.nvml_error,
            "service_error": self.service_error,
        }


def now() -> datetime:
    return datetime.now(UTC)


class GPUReporter:
    def __init__(
        self,
        settings: ReporterSettings,
        web_settings: dict[str, Any],
        kernels: Any,
        log: logging.Logger,
        sampler: Sampler | None = None,
        clock: Callable[[], datetime] = now,
    ) -> None:
        self.settings = settings
        self.web_settings = web_settings
        self.kernels = kernels
        self.log = log
        self.sampler = sampler or Sampler(settings.visible)
        self.state = ReporterState()
        self.clock = clock
        self.history = SampleHistory(settings.interval)
        """The last hour of samples, for the meter's chart."""
        self.client = AsyncHTTPClient(force_instance=True)
        self._backoff = settings.interval

    def kernel_busy(self) -> bool:
        try:
            return any(k.get("execution_state") == "busy" for k in self.kernels.list_kernels())
        except Exception:  # a kernel manager that cannot tell: no kernel counted busy
            return False

    def sample(self) -> list[GPUSample]:
        try:
            samples = self.sampler.sample()
        except NVMLUnavailable as exc:
            if self.state.nvml_error != str(exc):
                self.log.warning("gpuhub: cannot read the GPUs (%s); retrying with backoff", exc)
            self.state.nvml_error = str(exc)
            return []
        if self.state.nvml_error:
            self.log.info("gpuhub: reading the GPUs again")
        self.state.nvml_error = None
        lost = [s for s in samples if s.error]
        for s in lost:
            self.log.warning("gpuhub: GPU %s cannot be read: %s", s.uuid, s.error)
        return samples

    async def report_once(self) -> bool:
        """Sample, mark activity, report; False when something failed (back off)."""
        samples = await asyncio.get_running_loop().run_in_executor(None, self.sample)
        kernel_busy = self.kernel_busy()
        activity = gpu_activity(samples, self.state.threshold)
        self.state.samples, self.state.activity = tuple(samples), activity
        self.history.add(self.clock(), samples)
        if activity is Activity.BUSY or kernel_busy:
            self.web_settings[ACTIVITY_KEY] = self.clock()
        body = {
            "server_name": self.settings.server_name,
            "gpus": [asdict(s) for s in samples],
            "kernel_busy": kernel_busy,
        }
        answered = await self._post("api/v1/activity", body)
        return self.state.nvml_error is None and answered

    async def keep(self) -> dict[str, Any]:
        """The user clicked Keep: that is activity, and the service restarts the idle clocks."""
        self.web_settings[ACTIVITY_KEY] = self.clock()
        await self._post("api/v1/keep", {"server_name": self.settings.server_name})
        return self.state.as_json()

    async def _post(self, path: str, body: dict[str, Any]) -> bool:
        request = HTTPRequest(
            self.settings.service_url + path,
            method="POST",
            headers={
                "Authorization": f"token {self.settings.token}",
                "Content-Type": "application/json",
            },
            body=json.dumps(body),
            request_timeout=10,
        )
        try:
            response = await self.client.fetch(request)
        except (HTTPClientError, OSError) as exc:
            message = f"{path}: {exc}"
            if self.state.service_error != message:
                self.log.warning("gpuhub: the gpuhub service did not take %s", message)
            self.state.service_error = message
            return False
        self.state.service_error = None
        answer = json.loads(response.body or b"{}")
        self.state.warning = answer.get("warning")
        self.state.budget = answer.get("budget")
        self.state.session = answer.get("session")
        self.state.threshold = int(answer.get("gpu_utilization_percent", self.state.threshold))
        return True

    async def run(self) -> None:
        while True:
            ok = await self.report_once()
            self._backoff = self.settings.interval if ok else min(self._backoff * 2, MAX_BACKOFF)
            await asyncio.sleep(self._backoff)


def _handlers(serverapp: Any, reporter: GPUReporter | None) -> list[Any]:
    from jupyter_server.base.handlers import APIHandler
    from jupyter_server.utils import url_path_join

    class Status(APIHandler):
        _track_activity = False

        @web.authenticated
        def get(self) -> None:
            if reporter is None:
                self.finish(json.dumps({"enabled": False}))
                return
            self.finish(json.dumps({"enabled": True, **reporter.state.as_json()}))

    class History(APIHandler):
        """The last hour of the server's GPU samples (the meter's chart); not activity."""

        _track_activity = False

        @web.authenticated
        def get(self) -> None:
            if reporter is None:
                self.finish(json.dumps({"enabled": False}))
                return
            history = reporter.history.as_json(reporter.clock())
            self.finish(json.dumps({"enabled": True, **history}, separators=(",", ":")))

    class Keep(APIHandler):
        @web.authenticated
        async def post(self) -> None:
            if reporter is None:
                raise web.HTTPError(404, "gpuhub reports nothing on this server")
            self.finish(json.dumps({"enabled": True, **(await reporter.keep())}))

    base = serverapp.web_app.settings["base_url"]
    return [
        (url_path_join(base, "gpuhub", "status"), Status),
        (url_path_join(base, "gpuhub", "history"), History),
        (url_path_join(base, "gpuhub", "keep"), Keep),
    ]


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "spawner_ext.notebook.extension"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    import os

    settings = ReporterSettings.from_env(os.environ)
    log = serverapp.log
    reporter = None
    if settings is None:
        log.info("gpuhub: no %s; not reporting GPU activity", ENV_SERVICE_URL)
    else:
        reporter = GPUReporter(settings, serverapp.web_app.settings, serverapp.kernel_manager, log)
        tasks = serverapp.web_app.settings.setdefault("gpuhub_tasks", [])  # kept referenced

        def start() -> None:
            tasks.append(asyncio.ensure_future(reporter.run()))

        IOLoop.current().add_callback(start)
        log.info(
            "gpuhub: reporting GPU activity of %s every %.0f s",
            ",".join(settings.visible.selectors) or "no GPU",
            settings.interval,
        )
    serverapp.web_app.add_handlers(".*$", _handlers(serverapp, reporter))
