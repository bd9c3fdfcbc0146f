"""The docs build without warnings (broken links between pages, bad MyST), and the reference pages
generated from the code at build time (docs/_ext/) really hold the code's settings and options."""

from __future__ import annotations

import doctest
import html
import importlib
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
EXTENSIONS = ROOT / "docs" / "_ext"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("html")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", str(ROOT / "docs"), str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def extensions() -> Iterator[None]:
    sys.path.insert(0, str(EXTENSIONS))
    yield
    sys.path.remove(str(EXTENSIONS))


def text_of(page: Path) -> str:
    """The page's text without markup, as a reader sees it."""
    return html.unescape(re.sub(r"<[^>]+>", "", page.read_text()))


def test_docs_build_without_warnings(site: Path) -> None:
    assert (site / "reference" / "catalog.html").exists()


@pytest.mark.usefixtures("extensions")
def test_configuration_reference_has_every_configurable_class(site: Path) -> None:
    from traits_reference import configurable_classes

    page = (site / "reference" / "configuration.html").read_text()
    classes = list(configurable_classes())
    assert {c.__name__ for c in classes} >= {"GPUSpawnerMixin", "GPUKubeSpawner", "GPULocalSpawner"}
    for cls in classes:
        assert f'id="{cls.__module__}.{cls.__qualname__}"' in page, f"{cls} is not documented"
        for name in cls.class_own_traits(config=True):
            assert f'id="{cls.__module__}.{cls.__qualname__}.{name}"' in page, name
    text = text_of(site / "reference" / "configuration.html")
    assert "ledger_url: Unicode = 'sqlite:///gpuhub-ledger.sqlite'" in text
    assert "manage_resource_quotas: Bool = True" in text
    assert "gpuhub db upgrade --db-url URL" in text, "help text is rendered"


def argument_cells(page: Path) -> set[str]:
    """The first cell of every table row: the arguments of the generated tables."""
    rows = re.findall(r"<tr[^>]*>\s*<td><p>(.*?)</p></td>", page.read_text(), flags=re.S)
    return {html.unescape(re.sub(r"<[^>]+>", "", row)) for row in rows}


@pytest.mark.usefixtures("extensions")
def test_cli_reference_has_every_command_and_option(site: Path) -> None:
    from argparse_reference import commands

    from spawner_ext.cli import _parser

    page = site / "reference" / "cli.html"
    text, cells = text_of(page), argument_cells(page)
    for prog, _help, parser in commands(_parser()):
        assert f"usage: {prog}" in text, f"{prog} is not documented"
        for action in parser._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert any(c.split()[0].rstrip(",") == option for c in cells), option
    assert "usage: gpuhub db upgrade [-h] [--db-url DB_URL]" in text
    assert "--simulate-gpus SPEC" in cells


@pytest.mark.parametrize("module", ["markdown_text", "traits_reference", "argparse_reference"])
@pytest.mark.usefixtures("extensions")
def test_generator_doctests(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0
    assert result.failed == 0


def test_the_kubernetes_tutorial_shows_the_values_the_chart_tests_use(site: Path) -> None:
    """The tutorial includes helm-values/values.yaml itself (not a copy that could drift), and
    that is the file tests/k8s/test_z2jh_chart.py renders the real chart with."""
    source = (ROOT / "docs" / "tutorials" / "deploy-on-kubernetes.md").read_text()
    assert "```{literalinclude} ../../helm-values/values.yaml" in source
    chart_test = (ROOT / "tests" / "k8s" / "test_z2jh_chart.py").read_text()
    assert 'VALUES / "values.yaml"' in chart_test
    page = text_of(site / "tutorials" / "deploy-on-kubernetes.html")
    for line in (ROOT / "helm-values" / "values.yaml").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            assert line.strip() in page, f"the tutorial lacks {line.strip()!r}"
