"""The gpuhub service's cookie secret: made once in a file (mode 0600) and the same at the next
start, so a restart logs no usage-page reader out; from the environment on Kubernetes; bad
content or permissions refused with what to do. The real restart, through a hub, is
tests/integration/test_service.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tornado import web

from spawner_ext.catalog.store import CatalogStore
from spawner_ext.cli import _parser
from spawner_ext.service import cookie_secret
from spawner_ext.service.app import GPUHubService
from spawner_ext.service.cookie_secret import ENV, CookieSecretError, load
from spawner_ext.service.runtimes import LocalRuntime
from spawner_ext.service.web import make_app

CATALOG = Path(__file__).parents[1] / "hub_config" / "catalog.yaml"


def test_made_once_then_the_same_at_every_start(tmp_path: Path) -> None:
    path = tmp_path / "state" / "secret"
    path.parent.mkdir()
    first = load(path, {})
    assert first is not None and len(first) == cookie_secret.SECRET_BYTES
    assert path.stat().st_mode & 0o777 == 0o600
    assert load(path, {}) == first
    assert [p.name for p in path.parent.iterdir()] == ["secret"], "no temporary file is left"


def started(path: Path) -> web.Application:
    """The service's web application as `gpuhub service --cookie-secret-file path` makes it."""
    secret = load(path, {})
    assert secret is not None
    service = GPUHubService(
        CatalogStore(CATALOG),
        "sqlite://",
        hub=None,  # type: ignore[arg-type]
        runtime=LocalRuntime(list),
    )
    return make_app(service, "/services/gpu-usage/", cookie_secret=secret)


def test_a_login_signed_before_a_restart_is_valid_after_it(tmp_path: Path) -> None:
    """The service's login cookie is a value signed with the application's cookie secret."""
    path = tmp_path / "secret"
    before = started(path).settings["cookie_secret"]
    cookie = web.create_signed_value(before, "jupyterhub-services-gpu-usage", "token-of-ada")
    after = started(path).settings["cookie_secret"]
    found = web.decode_signed_value(after, "jupyterhub-services-gpu-usage", cookie)
    assert found == b"token-of-ada"
    path.unlink()  # a new secret: the old login is not valid any more
    other = started(path).settings["cookie_secret"]
    assert web.decode_signed_value(other, "jupyterhub-services-gpu-usage", cookie) is None


def test_the_environment_wins_and_neither_means_none(tmp_path: Path) -> None:
    given = "0123456789abcdef" * 4
    assert load(tmp_path / "secret", {ENV: given}) == bytes.fromhex(given)
    assert not (tmp_path / "secret").exists(), "the file is not made when the environment has one"
    assert load(None, {}) is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not hex at all\n", "must hold 64 or more hex digits"),
        ("abcd\n", "holds 2 bytes; a cookie secret needs 32 or more"),
        ("", "holds 0 bytes"),
    ],
)
def test_bad_content_says_which_file_and_what_to_do(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "secret"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(CookieSecretError) as raised:
        load(path, {})
    text = str(raised.value)
    assert f"the cookie secret file {path}" in text and message in text
    assert f"delete {path} to have a new one made" in text and "openssl rand -hex 32" in text


def test_a_bad_environment_value_says_so() -> None:
    with pytest.raises(CookieSecretError, match=f"{ENV} is not a cookie secret"):
        load(None, {ENV: "secret"})


def test_a_file_others_may_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("ab" * 32)
    path.chmod(0o644)
    with pytest.raises(CookieSecretError, match=f"run: chmod 600 {path}"):
        load(path, {})


def test_the_service_exits_2_with_the_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "secret"
    path.write_text("xyz\n")
    path.chmod(0o600)
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "t")
    monkeypatch.setenv("JUPYTERHUB_API_URL", "http://127.0.0.1:1/hub/api")
    monkeypatch.delenv(ENV, raising=False)
    args = _parser().parse_args(
        [
            "service",
            "--catalog",
            str(CATALOG),
            "--runtime",
            "local",
            "--cookie-secret-file",
            str(path),
        ]
    )
    assert args.run(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gpuhub service: the cookie secret file {path} is not a cookie secret")
    assert os.environ.get(ENV) is None
