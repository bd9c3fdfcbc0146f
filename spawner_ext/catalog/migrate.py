"""Turn a Zero to JupyterHub values file's `singleuser.profileList` into a catalog. Pure: text in,
catalog text plus the questions the admin must answer out; reading and printing are the CLI's.

GPUs asked for through `kubespawner_override.extra_resource_limits` (`nvidia.com/gpu: 2`,
`nvidia.com/mig-1g.10gb: 1`) become the profile's `gpu:` and a `gpu_types` entry, told apart by
the node selector keys in `GPU_LABELS`. What it cannot tell (which GPU, its price, who pays, how
many at once) is written as the value `TODO`, with a `TODO(gpuhub migrate)` comment: the loader
refuses every such value, so the catalog cannot bill anything until the admin has answered.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from copy import deepcopy
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel
from slugify import slugify

from .loader import kubespawner_settings, parse_catalog
from .override_gpus import (
    GPU_LABELS,
    GPUsAsked,
    as_mapping,
    gpu_type_name,
    gpus_asked,
    without_gpus,
)
from .overrides import merge_overrides
from .problems import CatalogError, Problem, format_path
from .references import suggest
from .schema import NAME_PATTERN, Choice, Profile, ProfileOption, UnlistedChoice
from .yamlsource import Loc, SourceMap, parse_yaml

TODO = "TODO"
MARK = "TODO(gpuhub migrate)"
NOTE = "NOTE(gpuhub migrate)"
PROFILE_LIST: Loc = ("singleuser", "profileList")


@dataclass(frozen=True)
class Migration:
    """The catalog text, what must be answered before it loads, and what was changed."""

    text: str
    questions: tuple[Problem, ...]
    """Each is a `TODO` value in `text` that the loader refuses until it is answered, or (file
    `<output>`) something of the input that the catalog refuses as it is."""
    notes: tuple[Problem, ...]
    """Keys dropped, profiles split, names guessed: worth a look, but the catalog loads."""


class _Todo:
    """A value the admin must write; dumped as `TODO` with the question as a comment."""

    def __init__(self, question: str) -> None:
        self.question = question


@dataclass
class _GPUType:
    key: str
    display_name: str | _Todo
    resource: str
    node_selector: dict[str, str] | _Todo
    tolerations: list[Mapping[str, Any]]
    used_by: list[str]


@dataclass
class _Out:
    """One profile of the output, with the comment lines written above it."""

    data: dict[str, Any]
    comments: list[str]
    gpu_type: str | None = None


class _Run:
    """The state of one migration: the input's positions, and what it has found so far."""

    def __init__(self, source: SourceMap, override_keys: frozenset[str]) -> None:
        self.source = source
        self.override_keys = override_keys
        self.questions: list[Problem] = []
        self.notes: list[Problem] = []
        self.gpu_types: dict[tuple[str, tuple[tuple[str, str], ...]], _GPUType] = {}
        self.slugs: set[str] = set()

    def ask(self, loc: Loc, message: str, comments: list[str]) -> None:
        self.questions.append(self.source.problem(loc, message))
        comments.append(f"{MARK}: {message}")

    def note(self, loc: Loc, message: str, comments: list[str]) -> None:
        self.notes.append(self.source.problem(loc, message))
        comments.append(f"{NOTE}: {message}")

    def where(self, loc: Loc) -> str:
        pos = self.source.locate(loc)
        return f"{self.source.file}:{pos.line}"


def migrate_values(
    text: str,
    file: str = "<values>",
    *,
    override_keys: Iterable[str] | None = None,
    currency: str = "USD",
) -> Migration:
    """Translate z2jh values YAML. Raises CatalogError (problems at the input's file:line) when
    it is not YAML, has no `singleuser.profileList`, or that is not a list of profiles."""
    keys = frozenset(override_keys) if override_keys is not None else kubespawner_settings()
    raw, source, problems = parse_yaml(text, file)
    if problems:
        raise CatalogError(problems)
    entries = _profile_list(raw, source)
    run = _Run(source, keys)
    profiles: list[_Out] = []
    for i, entry in enumerate(entries):
        profiles += _profile(run, (*PROFILE_LIST, i), entry)
    catalog = _render(run, profiles, file, currency)
    run.questions += _refusals(catalog, keys)
    return Migration(catalog, tuple(run.questions), tuple(run.notes))


def _profile_list(raw: Any, source: SourceMap) -> list[Mapping[str, Any]]:
    def fail(loc: Loc, message: str) -> CatalogError:
        return CatalogError([source.problem(loc, message)])

    hint = "; gpuhub migrate reads a Zero to JupyterHub values file (the chart's values.yaml)"
    if not isinstance(raw, Mapping):
        raise fail((), "expected a mapping with `singleuser:` at the top" + hint)
    singleuser = raw.get("singleuser")
    if not isinstance(singleuser, Mapping) or "profileList" not in singleuser:
        loc: Loc = ("singleuser",) if isinstance(singleuser, Mapping) else ()
        raise fail(loc, "there is no singleuser.profileList to migrate" + hint)
    entries = singleuser["profileList"]
    if not isinstance(entries, list):
        raise fail(PROFILE_LIST, "singleuser.profileList must be a list of profiles")
    if not entries:
        raise fail(PROFILE_LIST, "singleuser.profileList is empty; there is nothing to migrate")
    bad = [
        source.problem((*PROFILE_LIST, i), "each profile must be a mapping with a display_name")
        for i, entry in enumerate(entries)
        if not isinstance(entry, Mapping) or not isinstance(entry.get("display_name"), str)
    ]
    if bad:
        raise CatalogError(bad)
    return entries


# --- one profile -----------------------------------------------------------------------------


def _fields(model: type[BaseModel]) -> frozenset[str]:
    return frozenset(info.alias or name for name, info in model.model_fields.items())


def _known(
    run: _Run, loc: Loc, entry: Mapping[str, Any], model: type[BaseModel], comments: list[str]
) -> dict[str, Any]:
    """The entry's keys that the catalog accepts at this place; the others dropped, with notes."""
    fields = _fields(model)
    for key in entry:
        if key not in fields:
            run.note(
                (*loc, key),
                f"dropped {key!r}: the catalog has no such key here" + suggest(str(key), fields),
                comments,
            )
    return {k: v for k, v in entry.items() if k in fields}


def _overrides(run: _Run, loc: Loc, owner: dict[str, Any], comments: list[str]) -> dict[str, Any]:
    override = owner.get("kubespawner_override")
    if not isinstance(override, Mapping):
        return {}
    for key in override:
        if key not in run.override_keys:
            run.note(
                (*loc, "kubespawner_override", key),
                f"dropped kubespawner_override.{key}: not a KubeSpawner setting, so it did "
                "nothing" + suggest(str(key), run.override_keys),
                comments,
            )
    return {k: v for k, v in override.items() if k in run.override_keys}


def _profile(run: _Run, loc: Loc, entry: Mapping[str, Any]) -> list[_Out]:
    comments = [f"From {run.where(loc)} ({format_path(loc)})."]
    data = _known(run, loc, entry, Profile, comments)
    base = _overrides(run, loc, data, comments)
    options: dict[str, dict[str, Any]] = {}
    choice_overrides: dict[str, dict[str, dict[str, Any]]] = {}
    for name, option in as_mapping(data.get("profile_options")).items():
        where = (*loc, "profile_options", name)
        if not isinstance(option, Mapping):
            options[name] = option  # the loader says what is wrong
            continue
        kept = _known(run, where, option, ProfileOption, comments)
        choices: dict[str, Any] = {}
        choice_overrides[name] = {}
        for key, choice in as_mapping(kept.get("choices")).items():
            if isinstance(choice, Mapping):
                at = (*where, "choices", key)
                choice = _known(run, at, choice, Choice, comments)
                choice_overrides[name][key] = _overrides(run, at, choice, comments)
            choices[key] = choice
        if "choices" in kept:
            kept["choices"] = choices
        unlisted = kept.get("unlisted_choice")
        if isinstance(unlisted, Mapping):
            at = (*where, "unlisted_choice")
            unlisted = _known(run, at, unlisted, UnlistedChoice, comments)
            override = _overrides(run, at, unlisted, comments)
            if gpus_asked(override) is not None:
                run.note(
                    at,
                    "removed the GPUs from this free-text choice's override: GPUs come only "
                    "from a profile's `gpu:`",
                    comments,
                )
            unlisted["kubespawner_override"] = without_gpus(override)
            kept["unlisted_choice"] = unlisted
        options[name] = kept
    if "profile_options" in data:
        data["profile_options"] = options

    varying = [
        name
        for name, by_key in choice_overrides.items()
        if len({gpus_asked(merge_overrides(base, o)) for o in by_key.values()}) > 1
    ]
    if len(varying) == 1:
        return _split(run, loc, data, base, varying[0], choice_overrides, comments)
    requests = [gpus_asked(base)] + [
        gpus_asked(merge_overrides(base, o))
        for by_key in choice_overrides.values()
        for o in by_key.values()
    ]
    request = next((r for r in requests if r is not None), None)
    out = _Out(data, comments)
    _set_overrides(data, base, choice_overrides)
    if len(varying) > 1:
        data["gpu"] = _Todo("this profile's GPUs depend on several options; split it by hand")
        run.ask(
            loc,
            f"profile {data['display_name']!r}: the options {', '.join(varying)} each change "
            "its GPUs, and a gpuhub profile holds one GPU request; split it into one profile "
            "per combination and set each one's `gpu:`",
            comments,
        )
    elif request is not None:
        _request_gpus(run, loc, out, request)
    _place(run, loc, out)
    return [out]


def _split(
    run: _Run,
    loc: Loc,
    data: dict[str, Any],
    base: dict[str, Any],
    name: str,
    choice_overrides: dict[str, dict[str, dict[str, Any]]],
    comments: list[str],
) -> list[_Out]:
    """One profile per choice of the option `name`, whose choices ask for different GPUs."""
    options = dict(data["profile_options"])
    option = options.pop(name)
    choices: dict[str, Any] = option.get("choices", {})
    default = next((k for k, c in choices.items() if c.get("default")), next(iter(choices)))
    rest = {k: v for k, v in choice_overrides.items() if k != name}
    slug = data.get("slug") or slugify(str(data["display_name"]))
    keys = [k for k, c in choices.items() if isinstance(c, Mapping)]
    run.note(
        (*loc, "profile_options", name),
        f"profile {data['display_name']!r}: each choice of option {name!r} asks for other GPUs, "
        "and a gpuhub profile holds one GPU request, so each became a profile ("
        + ", ".join(slugify(f"{slug}-{k}") for k in keys)
        + f"); API clients that sent {name!r} now choose one of these profiles",
        comments,
    )
    outs: list[_Out] = []
    for key in keys:
        choice = choices[key]
        at = (*loc, "profile_options", name, "choices", key)
        own = [f"From {run.where(at)} ({format_path(at)})."]
        copy: dict[str, Any] = {
            "display_name": f"{data['display_name']}: {choice.get('display_name', key)}",
            "slug": slugify(f"{slug}-{key}"),
        }
        copy.update((k, v) for k, v in data.items() if k not in ("profile_options", *copy))
        if choice.get("description"):
            copy["description"] = " ".join(
                str(d) for d in (data.get("description"), choice["description"]) if d
            )
        copy.pop("default", None)
        if data.get("default") and key == default:
            copy["default"] = True
        groups = _groups(run, at, data.get("allowed_groups"), choice.get("allowed_groups"), own)
        if groups is not None:
            copy["allowed_groups"] = groups
        if options:
            copy["profile_options"] = deepcopy(options)
        effective = merge_overrides(base, choice_overrides[name].get(key, {}))
        out = _Out(copy, comments + own)
        _set_overrides(copy, effective, rest)
        request = gpus_asked(effective)
        if request is not None:
            _request_gpus(run, at, out, request)
        _place(run, at, out)
        outs.append(out)
    return outs


def _groups(
    run: _Run, loc: Loc, profile: Any, choice: Any, comments: list[str]
) -> list[str] | None:
    """Who may use a profile split from a choice: members of the profile's groups and of the
    choice's. `allowed_groups` means any one of, so both become the groups in both lists."""
    if not isinstance(choice, list):
        return profile if isinstance(profile, list) else None
    if not isinstance(profile, list):
        return choice
    both = [g for g in choice if g in profile]
    if set(both) != set(choice) or set(both) != set(profile):
        run.note(
            loc,
            f"allowed_groups {both} are the groups both the profile ({profile}) and the choice "
            f"({choice}) allowed; add groups whose members should keep it",
            comments,
        )
    return both


def _set_overrides(
    data: dict[str, Any], base: dict[str, Any], choices: dict[str, dict[str, dict[str, Any]]]
) -> None:
    """Write the overrides back without their GPU requests (those become `gpu:`)."""
    gpus = any(gpus_asked(merge_overrides(base, o)) for c in choices.values() for o in c.values())
    gpus = gpus or gpus_asked(base) is not None
    override = without_gpus(base) if gpus else base
    if override:
        data["kubespawner_override"] = override
    else:
        data.pop("kubespawner_override", None)
    for name, by_key in choices.items():
        for key, choice_override in by_key.items():
            choice = data["profile_options"][name]["choices"][key]
            stripped = without_gpus(choice_override) if gpus else choice_override
            if stripped:
                choice["kubespawner_override"] = stripped
            else:
                choice.pop("kubespawner_override", None)


# --- GPUs -------------------------------------------------------------------------------------


def _count(value: str) -> int | None:
    return int(value) if re.fullmatch(r"\s*[1-9][0-9]*\s*", value) else None


def _request_gpus(run: _Run, loc: Loc, out: _Out, request: GPUsAsked) -> None:
    """Set `out`'s `gpu:` from `request` and file its GPU type (or ask)."""
    name = out.data["display_name"]
    if len(request.resources) > 1:
        asked = ", ".join(f"{k}: {v}" for k, v in request.resources)
        out.data["gpu"] = _Todo("one GPU type and count")
        run.ask(
            loc,
            f"profile {name!r} asks for several GPU resources ({asked}); a gpuhub profile "
            "holds GPUs of one type: choose one, or split the profile",
            out.comments,
        )
        return
    ((resource, value),) = request.resources
    count = _count(value)
    is_mig = resource.startswith("nvidia.com/mig-")
    if count is None or (is_mig and count != 1):
        why = (
            f"{count} MIG slices ({resource}); a process can use one MIG device, so define a "
            "larger slice type"
            if count is not None
            else f"{resource}: {value!r}, not a whole number of GPUs"
        )
        out.data["gpu"] = _Todo("the GPU type and count")
        run.ask(loc, f"profile {name!r} asks for {why}; set its `gpu:`", out.comments)
        return
    gpu_type = _gpu_type(run, loc, out, resource, dict(request.selector))
    for toleration in request.tolerations:
        if toleration not in gpu_type.tolerations:
            gpu_type.tolerations.append(toleration)
    gpu_type.used_by.append(f"{run.where(loc)} ({name})")
    out.data["gpu"] = {"type": gpu_type.key, "count": count}
    out.gpu_type = gpu_type.key


def _gpu_type(run: _Run, loc: Loc, out: _Out, resource: str, selector: dict[str, str]) -> _GPUType:
    signature = (resource, tuple(sorted(selector.items())))
    found = run.gpu_types.get(signature)
    if found is not None:
        return found
    known = gpu_type_name(resource, selector)
    taken = {t.key for t in run.gpu_types.values()}
    if known is None:
        key = _unique(slugify(f"unknown-{resource.split('/', 1)[1]}"), taken)
        gpu_type = _GPUType(
            key,
            _Todo("the name users see, e.g. NVIDIA T4 16GB"),
            resource,
            _Todo("labels of the nodes with this GPU, or {} if every GPU node has it"),
            [],
            [],
        )
        run.ask(
            loc,
            f"profile {out.data['display_name']!r} asks for {resource}, but no node selector "
            f"({', '.join(GPU_LABELS[:3])}) says which GPU; describe gpu_types.{key}",
            out.comments,
        )
    else:
        key, name, note = known
        key = _unique(key, taken)
        gpu_type = _GPUType(key, name, resource, dict(selector), [], [])
        if note:
            run.note(loc, f"{note}; check gpu_types.{key}.display_name", out.comments)
    run.gpu_types[signature] = gpu_type
    run.questions.append(
        run.source.problem(
            loc,
            f"the price of one {resource} of this profile's type per hour: fill in "
            f"gpu_types.{key}.price_per_hour",
        )
    )
    return gpu_type


def _unique(key: str, taken: set[str]) -> str:
    key = key[:60].strip("-") or "gpu"
    if key not in taken:
        return key
    n = 2
    while f"{key}-{n}" in taken:
        n += 1
    return f"{key}-{n}"


def _place(run: _Run, loc: Loc, out: _Out) -> None:
    """Give each profile a valid slug that no other profile has (KubeSpawner takes the first
    of two with one slug, and allows any text; a catalog slug becomes a Kubernetes label)."""
    slug = out.data.get("slug")
    if not isinstance(slug, str):
        name = out.data["display_name"]
        slug = slugify(name) if isinstance(name, str) else ""
    valid = slug if re.fullmatch(NAME_PATTERN, slug) else slugify(slug)
    unique = _unique(valid, run.slugs)
    if unique != slug:
        why = "was taken" if valid == slug else "is not a valid name"
        run.note(
            loc,
            f"slug {slug!r} {why}; this profile's slug is {unique!r}, so API clients that "
            f"start {slug!r} must start {unique!r}",
            out.comments,
        )
    if unique != out.data.get("slug", slugify(str(out.data["display_name"]))):
        out.data["slug"] = unique
    run.slugs.add(unique)


# --- output -----------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Block-style YAML without anchors; `_Todo` values as numbered tokens, replaced later."""

    todos: list[_Todo]

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _todo_token(dumper: _Dumper, todo: _Todo) -> yaml.ScalarNode:
    dumper.todos.append(todo)
    return dumper.represent_scalar("tag:yaml.org,2002:str", f"gpuhub-todo-{len(dumper.todos)}")


_Dumper.add_representer(_Todo, _todo_token)


def _dump(value: Any, indent: int) -> list[str]:
    todos: list[_Todo] = []

    class Dumper(_Dumper):
        pass

    Dumper.todos = todos
    text = yaml.dump(
        value,
        Dumper=Dumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=96,
    )
    lines = []
    for line in text.splitlines():
        found = re.search(r"gpuhub-todo-(\d+)", line)
        if found:
            todo = todos[int(found.group(1)) - 1]
            line = f"{line[: found.start()]}{TODO}  # {MARK}: {todo.question}"
        lines.append(" " * indent + line)
    return lines


def _render(run: _Run, profiles: list[_Out], file: str, currency: str) -> str:
    lines = [
        f"# A gpuhub catalog made by `gpuhub migrate {file}` from its singleuser.profileList.",
        f"# Answer every {MARK} (each value TODO is refused until then), look at each",
        f"# {NOTE}, then check the file: gpuhub validate FILE.",
        "# Reference: docs/reference/catalog.md; guide: docs/how-to/migrate-from-z2jh.md",
        "",
        "metering:",
        f"  currency: {currency}  # of every price below",
        "",
    ]
    if run.gpu_types:
        lines.append("gpu_types:")
        for gpu_type in run.gpu_types.values():
            lines += [f"  # Asked for by {', '.join(gpu_type.used_by)}."]
            entry: dict[str, Any] = {
                "display_name": gpu_type.display_name,
                "resource": gpu_type.resource,
                "price_per_hour": _Todo(f"the price of one of these for one hour, in {currency}"),
                "node_selector": gpu_type.node_selector,
            }
            if gpu_type.tolerations:
                entry["tolerations"] = gpu_type.tolerations
            lines += _dump({gpu_type.key: entry}, 2)
        lines += ["", *_teams(run, profiles), ""]
    lines.append("profiles:")
    for out in profiles:
        lines += [f"  # {c}" for c in out.comments]
        lines += _dump([out.data], 2)
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def _teams(run: _Run, profiles: list[_Out]) -> list[str]:
    """One team for the GPU profiles' users: GPU servers are charged to a team, and a user in
    no team may start only CPU profiles."""
    gpu_profiles = [o for o in profiles if o.gpu_type is not None]
    groups: list[str] | _Todo
    if gpu_profiles and all(isinstance(o.data.get("allowed_groups"), list) for o in gpu_profiles):
        groups = list(dict.fromkeys(g for o in gpu_profiles for g in o.data["allowed_groups"]))
    else:
        groups = _Todo("the JupyterHub groups whose members may use GPUs, e.g. [gpu-users]")
    quota = {
        t.key: _Todo("how many of these the team's servers may hold at once")
        for t in run.gpu_types.values()
    }
    team = {"display_name": "GPU users", "groups": groups, "quota": {"gpus": quota}}
    lines = [
        "teams:",
        f"  # {MARK}: GPU servers are charged to a team, and users in no team may start only",
        "  # CPU profiles. Who is in this team, and how many GPUs may it hold at once? Add",
        "  # teams (and quota.monthly_gpu_hours) as you need; see docs/reference/catalog.md.",
    ]
    run.questions.append(
        Problem(
            run.source.file,
            run.source.locate(PROFILE_LIST).line,
            run.source.locate(PROFILE_LIST).column,
            format_path(PROFILE_LIST),
            "GPU servers are charged to a team: fill in teams.gpu-users (its groups and its "
            "GPUs per type at once)",
        )
    )
    return lines + _dump({"gpu-users": team}, 2)


def _refusals(catalog: str, override_keys: frozenset[str]) -> list[Problem]:
    """What the loader refuses in the output other than TODO values: input the catalog cannot
    take as it is (a duplicate slug, a value of the wrong type). Each needs an answer too."""
    try:
        parse_catalog(catalog, "<output>", override_keys=override_keys)
    except CatalogError as exc:
        lines = catalog.splitlines()
        return [
            Problem("<output>", p.line, p.column, p.path, f"the catalog refuses this: {p.message}")
            for p in exc.problems
            if not (0 < p.line <= len(lines) and MARK in lines[p.line - 1])
        ]
    return []
