"""Property tests: whatever text arrives, the loader raises only CatalogError, and every problem
names a line inside the file."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spawner_ext.catalog import Catalog, CatalogError, parse_catalog
from spawner_ext.catalog.loader import kubespawner_settings

EXAMPLE = (Path(__file__).parents[2] / "hub_config" / "catalog.yaml").read_text()
LINES = EXAMPLE.splitlines(keepends=True)
KNOWN = kubespawner_settings()
YAML_LINE_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check(text: str) -> None:
    try:
        result = parse_catalog(text, "fuzz.yaml", override_keys=KNOWN)
    except CatalogError as exc:
        assert exc.problems
        # lines as YAML counts them: \r\n, \r, \n, NEL, LS and PS all end one (hypothesis found
        # '\r\x850', whose third line a count of '\n' alone does not see)
        last_line = len(YAML_LINE_BREAK.split(text)) + 1
        for problem in exc.problems:
            assert problem.file == "fuzz.yaml"
            assert 1 <= problem.line <= last_line, problem
            assert problem.column >= 1, problem
            assert problem.message, problem
    else:
        assert isinstance(result, Catalog)


@FUZZ
@given(st.text(max_size=400))
def test_random_text(text: str) -> None:
    check(text)


yaml_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.sampled_from(
                [
                    "profiles",
                    "gpu_types",
                    "teams",
                    "gpu",
                    "type",
                    "count",
                    "slug",
                    "display_name",
                    "quota",
                    "gpus",
                    "price_per_hour",
                    "x",
                ]
            ),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=20,
)


@FUZZ
@given(yaml_values)
def test_random_yaml_documents(value: object) -> None:
    check(yaml.safe_dump(value))


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["delete", "duplicate", "replace", "insert"]),
            st.integers(min_value=0, max_value=len(LINES) - 1),
            st.text(alphabet=" :-[]{}#&*!|>'\"abcxyz019\n\t", max_size=12),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_mutated_example(edits: list[tuple[str, int, str]]) -> None:
    lines = list(LINES)
    for action, index, junk in edits:
        index %= max(len(lines), 1)
        if not lines:
            break
        if action == "delete":
            del lines[index]
        elif action == "duplicate":
            lines.insert(index, lines[index])
        elif action == "replace":
            line = lines[index]
            cut = len(junk) % max(len(line), 1)
            lines[index] = line[:cut] + junk + line[cut + len(junk) :]
        else:
            lines.insert(index, junk + "\n")
    check("".join(lines))


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    check("profiles: " + "[" * 5000 + "]" * 5000)
