"""What `gpuhub up` prints once the hub answers (pure)."""

from __future__ import annotations

from pathlib import Path

from spawner_ext.catalog import load_catalog
from spawner_ext.up.banner import banner
from spawner_ext.up.config import UpSettings, example_catalog

CATALOG = load_catalog(example_catalog())


def settings(extra: Path | None) -> UpSettings:
    return UpSettings(
        catalog=example_catalog(),
        state_dir=Path("/tmp/state"),
        password="pw-users-123",
        admin_password="pw-admin-456",
        extra_config=extra,
    )


def test_the_shared_password_login_is_told_plainly() -> None:
    text = banner(settings(None), CATALOG, "http://host:8000/", Path("/tmp/log"), "2 x H100")
    assert "Log in with any user name and this password" in text
    assert "Password: pw-users-123" in text
    assert "Admin: user name 'admin', password: pw-admin-456" in text
    assert "ada" in text and "GPUs:  2 x H100" in text


def test_a_further_config_may_log_in_another_way_and_the_banner_says_so() -> None:
    text = banner(
        settings(Path("/etc/oidc.py")), CATALOG, "http://host:8000/", Path("/tmp/log"), "none"
    )
    assert "Log in as /etc/oidc.py sets up" in text
    assert "If it keeps gpuhub's shared-password login" in text
    assert "\n  Password: pw-users-123\n" in text, "one line of its own, as scripts read it"
    assert "Log in with any user name and this password" not in text
    assert text.index("With the shared-password login:") < text.index("Admin: user name")
