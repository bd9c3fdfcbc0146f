"""Sphinx extension: the configuration reference of a traitlets class, generated at build time.

    ```{gpuhub-configurable} spawner_ext.kube.spawner.GPUKubeSpawner
    ```

renders the class's docstring and each configurable trait it declares itself
(`cls.class_own_traits(config=True)`) with its type, default and help text, as JupyterHub's
`autoconfigurable` does, and lists the inherited settings whose default a gpuhub class sets.
Inherited traits of JupyterHub's Spawner and KubeSpawner are theirs to document.
`configurable_classes` finds every class of a package that has such traits (tests/test_docs.py
checks each is on the page).
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import re
from collections.abc import Iterator
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from markdown_text import escape
from sphinx.util.docutils import SphinxDirective
from traitlets import Instance, TraitType, Undefined
from traitlets.config import Configurable

PACKAGE = "spawner_ext"


def import_object(path: str) -> Any:
    """`package.module.Name` -> the object."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def trait_type(trait: TraitType[Any, Any]) -> str:
    """The trait's class, with the class an Instance holds.

    >>> from traitlets import Unicode
    >>> trait_type(Unicode())
    'Unicode'
    >>> trait_type(Instance("pathlib.Path", allow_none=True))
    'Instance(pathlib.Path) or None'
    """
    name = type(trait).__name__
    if isinstance(trait, Instance):
        klass = trait.klass
        shown = klass if isinstance(klass, str) else f"{klass.__module__}.{klass.__qualname__}"
        name = f"{name}({shown})"
    if trait.allow_none and trait.default_value is not None:
        name += " or None"
    return name


def computed_defaults(cls: type) -> set[str]:
    """Names of the traits whose default a method of `cls` or a base computes (`@default`)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        names |= set(vars(klass).get("_trait_default_generators", {}))
    return names


def defaults_set_by_package(cls: type[Configurable], package: str = PACKAGE) -> dict[str, str]:
    """Configurable traits of `cls` declared by a base class whose default a class of `package`
    (`cls` or a base) computes instead: trait name -> that class (the nearest in the MRO)."""
    configurable = cls.class_traits(config=True)
    found: dict[str, str] = {}
    for klass in cls.__mro__:
        if not (klass.__module__.startswith(package) and issubclass(klass, Configurable)):
            continue
        declared = klass.class_own_traits()
        for name in vars(klass).get("_trait_default_generators", {}):
            if name in configurable and name not in declared:
                found.setdefault(name, klass.__name__)
    return dict(sorted(found.items()))


def paragraphs(text: str) -> list[str]:
    """Each paragraph of `text` escaped, each followed by a blank line."""
    out: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text.strip()):
        if paragraph.strip():
            out += [escape(paragraph), ""]
    return out


def class_markdown(cls: type[Configurable], package: str = PACKAGE) -> str:
    """The reference of `cls` as MyST Markdown: a `py:class` with a `py:attribute` per trait.

    >>> from traitlets import Int
    >>> class Demo(Configurable):
    ...     '''A demo.'''
    ...     retries = Int(3, config=True, help="How often to retry (`0`: never).")
    ...     internal = Int(1)
    >>> Demo.__module__ = "pkg.demo"
    >>> print(class_markdown(Demo, package="pkg"))
    ````{py:class} Demo
    :module: pkg.demo
    <BLANKLINE>
    A demo.
    <BLANKLINE>
    Set as `c.Demo.NAME = VALUE` in the JupyterHub config file.
    <BLANKLINE>
    ```{py:attribute} retries
    :type: "Int"
    :value: "3"
    <BLANKLINE>
    How often to retry (`0`: never).
    ```
    <BLANKLINE>
    ````
    """
    lines = [
        f"````{{py:class}} {cls.__name__}",
        f":module: {cls.__module__}",
        "",
        *paragraphs(inspect.getdoc(cls) or ""),
        f"Set as `c.{cls.__name__}.NAME = VALUE` in the JupyterHub config file.",
        "",
    ]
    computed = computed_defaults(cls)
    for name, trait in sorted(cls.class_own_traits(config=True).items()):
        lines += [f"```{{py:attribute}} {name}", f":type: {json.dumps(trait_type(trait))}"]
        if name not in computed and trait.default_value is not Undefined:
            lines.append(f":value: {json.dumps(trait.default_value_repr())}")  # YAML
        lines += ["", escape(trait.help or "(no help text)")]
        if name in computed:
            lines += ["", "Its default is computed when it is first used, as described above."]
        lines += ["```", ""]
    inherited = defaults_set_by_package(cls, package)
    if inherited:
        lines.append("Inherited settings whose default gpuhub sets (in the class named):")
        lines.append("")
        lines += [f"- `{name}` (by {owner})" for name, owner in inherited.items()]
        lines.append("")
    lines.append("````")
    return "\n".join(lines)


def configurable_classes(package: str = PACKAGE) -> Iterator[type[Configurable]]:
    """Every class defined in `package` that declares configurable traits of its own."""
    root = importlib.import_module(package)
    for info in pkgutil.walk_packages(root.__path__, f"{package}."):
        if info.name.endswith("__main__") or ".migrations" in info.name:
            continue  # __main__ runs the command; migrations run under Alembic only
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if (
                inspect.isclass(value)
                and issubclass(value, Configurable)
                and value.__module__ == module.__name__
                and value.class_own_traits(config=True)
            ):
                yield value


class ConfigurableDirective(SphinxDirective):
    """`gpuhub-configurable CLASS`: the generated reference of one traitlets class."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        cls = import_object(self.arguments[0])
        self.env.note_reread()  # the code, not this page, is the source: rebuild every time
        holder = nodes.container()
        text = StringList(class_markdown(cls).splitlines(), source=self.arguments[0])
        self.state.nested_parse(text, self.content_offset, holder)
        return list(holder.children)


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("gpuhub-configurable", ConfigurableDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
