"""Load a catalog from YAML text or a file: every problem at once, each with file:line:col.

`parse_catalog` is pure (text in, frozen Catalog or CatalogError out); `load_catalog` reads a file.
The loader raises nothing but CatalogError for any input.
"""

from __future__ import annotations

import difflib
import functools
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from .problems import CatalogError, Problem
from .references import Found, reference_problems, suggest
from .schema import NAME_PATTERN, Catalog
from .yamlsource import Loc, SourceMap, parse_yaml


def load_catalog(path: str | Path, *, override_keys: Iterable[str] | None = None) -> Catalog:
    """Read and validate a catalog file. Raises CatalogError naming every problem."""
    text = read_catalog_text(path)
    return parse_catalog(text, str(path), override_keys=override_keys)


def read_catalog_text(path: str | Path) -> str:
    """The file's text; unreadable files and bad encodings become a CatalogError."""
    file = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CatalogError(
            [Problem(file, 1, 1, "", f"cannot read the file: {exc.strerror}")]
        ) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise CatalogError(
            [Problem(file, line, column, "", "the file is not UTF-8 text; save it as UTF-8")]
        ) from None


def parse_catalog(
    text: str, file: str = "<catalog>", *, override_keys: Iterable[str] | None = None
) -> Catalog:
    """Validate catalog YAML text. `override_keys` are the valid `kubespawner_override` keys
    (default: KubeSpawner's traits)."""
    try:
        return _parse(text, file, override_keys)
    except CatalogError:
        raise
    except RecursionError:
        raise CatalogError([Problem(file, 1, 1, "", "the document is nested too deeply")]) from None


def _parse(text: str, file: str, override_keys: Iterable[str] | None) -> Catalog:
    raw, source, problems = parse_yaml(text, file)
    if problems and raw is None:
        raise CatalogError(problems)
    if raw is None:
        raise CatalogError(
            [Problem(file, 1, 1, "", "the file is empty; a catalog needs at least `profiles:`")]
        )
    if not isinstance(raw, Mapping):
        pos = source.locate(())
        raise CatalogError(
            [
                Problem(
                    file,
                    pos.line,
                    pos.column,
                    "",
                    f"the catalog must be a mapping with keys such as gpu_types, teams and "
                    f"profiles, not {_kind(raw)}",
                )
            ]
        )
    keys = frozenset(override_keys) if override_keys is not None else kubespawner_settings()
    found = reference_problems(raw) + override_problems(raw, keys)
    problems += [source.problem(f.loc, f.message, key=f.at_key) for f in found]
    try:
        catalog = Catalog.model_validate(raw)
    except ValidationError as exc:
        problems += _schema_problems(exc, source)
        raise CatalogError(problems) from None
    if problems:
        raise CatalogError(problems)
    return catalog


def catalog_warnings(text: str, file: str = "<catalog>") -> list[Problem]:
    """Things that load but probably do not do what the admin meant, with their positions.
    Pure; call it on a catalog that loads (parse_catalog raised nothing)."""
    raw, source, _ = parse_yaml(text, file)
    return [source.problem(f.loc, f.message, key=f.at_key) for f in gpu_override_notes(raw)]


GPU_LIMIT_SETTINGS = ("extra_resource_limits", "extra_resource_guarantees")


def gpu_override_notes(raw: Any) -> list[Found]:
    """GPUs asked for through kubespawner_override instead of `gpu:`: pods never get them (the
    spawner removes GPU resources a profile's `gpu:` does not ask for, so quotas hold)."""
    found: list[Found] = []
    profiles = raw.get("profiles") if isinstance(raw, Mapping) else None
    for i, profile in enumerate(profiles if isinstance(profiles, list) else []):
        override = profile.get("kubespawner_override") if isinstance(profile, Mapping) else None
        for setting in GPU_LIMIT_SETTINGS:
            limits = override.get(setting) if isinstance(override, Mapping) else None
            for resource in limits if isinstance(limits, Mapping) else {}:
                if str(resource).startswith("nvidia.com/"):
                    found.append(
                        Found(
                            ("profiles", i, "kubespawner_override", setting, resource),
                            f"{resource} here is removed from the pod: GPUs come only from the "
                            "profile's `gpu: {type: ..., count: ...}`, so quotas and billing see "
                            "them; move it there",
                            at_key=True,
                        )
                    )
    return found


@functools.cache
def kubespawner_settings() -> frozenset[str]:
    """Names KubeSpawner accepts in `kubespawner_override` (its traits)."""
    from kubespawner import KubeSpawner

    return frozenset(KubeSpawner.class_trait_names())


def override_problems(raw: Any, known: frozenset[str]) -> list[Found]:
    """Unknown keys in every `kubespawner_override` of the profiles (they would do nothing)."""
    found: list[Found] = []
    profiles = raw.get("profiles") if isinstance(raw, Mapping) else None
    for i, profile in enumerate(profiles if isinstance(profiles, list) else []):
        if not isinstance(profile, Mapping):
            continue
        found += _unknown_overrides(("profiles", i, "kubespawner_override"), profile, known)
        options = profile.get("profile_options")
        for name, option in (options if isinstance(options, Mapping) else {}).items():
            if not isinstance(option, Mapping):
                continue
            loc: Loc = ("profiles", i, "profile_options", name)
            choices = option.get("choices")
            for key, choice in (choices if isinstance(choices, Mapping) else {}).items():
                if isinstance(choice, Mapping):
                    where = (*loc, "choices", key, "kubespawner_override")
                    found += _unknown_overrides(where, choice, known)
            unlisted = option.get("unlisted_choice")
            if isinstance(unlisted, Mapping):
                where = (*loc, "unlisted_choice", "kubespawner_override")
                found += _unknown_overrides(where, unlisted, known)
    return found


def _unknown_overrides(loc: Loc, owner: Mapping[Any, Any], known: frozenset[str]) -> list[Found]:
    override = owner.get("kubespawner_override")
    if not isinstance(override, Mapping):
        return []
    return [
        Found(
            (*loc, key),
            f"{key!r} is not a KubeSpawner setting, so it would do nothing"
            + suggest(str(key), known),
            at_key=True,
        )
        for key in override
        if key not in known
    ]


# --- pydantic errors as problems -----------------------------------------------------------------


def _schema_problems(exc: ValidationError, source: SourceMap) -> list[Problem]:
    errors = exc.errors(include_url=False)
    # A misspelt key also makes the right one missing; the 'did you mean' says both.
    suggested = {
        (*err["loc"][:-1], close)
        for err in errors
        if err["type"] == "extra_forbidden"
        for close in difflib.get_close_matches(
            str(err["loc"][-1]), _field_names(tuple(err["loc"][:-1])), n=1, cutoff=0.6
        )
    }
    return [
        _problem(err, source)
        for err in errors
        if not (err["type"] == "missing" and tuple(err["loc"]) in suggested)
    ]


def _problem(err: Mapping[str, Any], source: SourceMap) -> Problem:
    loc = tuple(err["loc"])
    at_key = False
    if loc and loc[-1] == "[key]":
        loc, at_key = loc[:-1], True
    kind = err["type"]
    if kind == "extra_forbidden":
        name = str(loc[-1])
        fields = _field_names(loc[:-1])
        return source.problem(loc, f"unknown key {name!r}{suggest(name, fields)}", key=True)
    if kind == "missing":
        return source.problem(loc, f"missing required key {loc[-1]!r}")
    return source.problem(loc, _message(err), key=at_key)


def _message(err: Mapping[str, Any]) -> str:
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    got = f"got {_kind(value)}"
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", err["msg"]))
    templates = {
        "int_type": "expected a whole number, {got}",
        "int_parsing": "expected a whole number, {got}",
        "int_from_float": "expected a whole number, {got}",
        "bool_type": "expected true or false, {got}",
        "bool_parsing": "expected true or false, {got}",
        "string_type": "expected text, {got}",
        "dict_type": "expected a mapping of keys to values, {got}",
        "mapping_type": "expected a mapping of keys to values, {got}",
        "model_type": "expected a mapping of keys to values, {got}",
        "model_attributes_type": "expected a mapping of keys to values, {got}",
        "tuple_type": "expected a list, {got}",
        "list_type": "expected a list, {got}",
        "literal_error": "expected one of {expected}, {got}",
        "greater_than_equal": "must be at least {ge}, {got}",
        "less_than_equal": "must be at most {le}, {got}",
        "string_pattern_mismatch": "{value!r} is not allowed here: it must match {pattern}",
    }
    template = templates.get(kind)
    if kind == "string_pattern_mismatch" and ctx.get("pattern") == NAME_PATTERN:
        return (
            f"{value!r} is not a valid name: use lower-case letters, digits and '-', starting and "
            "ending with a letter or digit, at most 63 characters (it becomes a Kubernetes label)"
        )
    if template is None:
        return f"{err['msg']}, {got}"
    return template.format(got=got, value=value, **ctx)


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return repr(value)


def _field_names(loc: Loc) -> list[str]:
    """Keys valid at `loc` in the catalog schema (for 'did you mean')."""
    model = _model_at(Catalog, loc)
    if model is None:
        return []
    names: list[str] = []
    for name, info in model.model_fields.items():
        names.append(info.alias or name)
    return names


def _model_at(annotation: Any, loc: Loc) -> type[BaseModel] | None:
    current = annotation
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = field.annotation
        else:
            args = typing.get_args(current)
            if not args:
                return None
            current = args[-1] if typing.get_origin(current) is not tuple else args[0]
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    """Strip Annotated[...] and `X | None` down to X."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            rest = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = rest[0]
        else:
            return annotation


__all__ = ["kubespawner_settings", "load_catalog", "parse_catalog", "read_catalog_text"]
