"""What `gpuhub up` prints once the hub answers (pure)."""

from __future__ import annotations

from pathlib import Path

from spawner_ext.catalog import load_catalog
from spawner_ext.up.banner import banner
from spawner_ext.up.config import UpSettings, example_catalog

CATALOG = load_catalog(example_catalog())


def settings(
    extra: Path | None,
    password: str = "pw-users-123",
    admin_password: str = "pw-admin-456",
    passwords_file: Path | None = None,
) -> UpSettings:
    return UpSettings(
        catalog=example_catalog(),
        state_dir=Path("/tmp/state"),
        password=password,
        admin_password=admin_password,
        extra_config=extra,
        passwords_file=passwords_file,
    )


def test_the_shared_password_login_is_told_plainly() -> None:
    text = banner(settings(None), CATALOG, "http://host:8000/", Path("/tmp/log"), "2 x H100")
    assert "Log in with any user name and this password" in text
    assert "Password: pw-users-123" in text
    assert "Admin: user name 'admin', password: pw-admin-456" in text
    assert "ada" in text and "GPUs:  2 x H100" in text
    # ... and what it means: anyone who has it is anyone, leads included; and the way out.
    flat = " ".join(text.split())
    assert "Anyone who has this password can log in as any user but 'admin'" in flat
    assert "team leads included (they read their teams' usage and cost)" in flat
    assert "start with --passwords FILE" in flat


def test_a_further_config_may_log_in_another_way_and_the_banner_says_so() -> None:
    text = banner(
        settings(Path("/etc/oidc.py")), CATALOG, "http://host:8000/", Path("/tmp/log"), "none"
    )
    assert "Log in as /etc/oidc.py sets up" in text
    assert "If it keeps gpuhub's shared-password login" in text
    assert "\n  Password: pw-users-123\n" in text, "one line of its own, as scripts read it"
    assert "Log in with any user name and this password" not in text
    assert text.index("With the shared-password login:") < text.index("Admin: user name")


def test_per_user_passwords_say_who_logs_in_and_print_no_shared_password() -> None:
    file = Path("/etc/gpuhub/passwords.yaml")
    text = banner(
        settings(None, password="", passwords_file=file),
        CATALOG,
        "http://host:8000/",
        Path("/tmp/log"),
        "none",
    )
    flat = " ".join(text.split())
    assert f"Log in as a user named in {file}, with that user's own password" in flat
    assert "no other name can log in" in flat
    assert "Password:" not in text and "Anyone who has this password" not in text
    assert "others in the file" in text and "any other name" not in text
    assert "Admin: user name 'admin', password: pw-admin-456" in text
    in_file = banner(
        settings(None, password="", admin_password="", passwords_file=file),
        CATALOG,
        "http://host:8000/",
        Path("/tmp/log"),
        "none",
    )
    assert f"Admin: user name 'admin', with its password in {file}" in in_file
