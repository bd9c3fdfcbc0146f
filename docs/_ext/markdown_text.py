"""Help text as MyST Markdown: backtick spans stay code, everything else is escaped so that a
`<`, `*` or `|` in a help string is shown as written. Used by the reference generators. Pure."""

from __future__ import annotations

import re

_CODE = re.compile(r"(`[^`]+`)")
_SPECIAL = re.compile(r"([\\*_\[\]<>|#~$])")


def escape(text: str) -> str:
    r"""`text` as Markdown that reads as the text itself, with its backtick spans as code.

    >>> escape("a `--db-url URL` of the <gpu resource> (default: *none*)")
    'a `--db-url URL` of the \\<gpu resource\\> (default: \\*none\\*)'
    >>> escape("a | b")
    'a \\| b'
    """
    parts = _CODE.split(" ".join(text.split()))
    return "".join(part if _CODE.fullmatch(part) else _SPECIAL.sub(r"\\\1", part) for part in parts)


def code(text: str) -> str:
    """`text` as one inline code span, whatever backticks it holds.

    >>> code("--db-url URL")
    '`--db-url URL`'
    >>> code("a`b")
    '`` a`b ``'
    """
    if "`" not in text:
        return f"`{text}`"
    return f"`` {text} ``"


def cell(markdown: str) -> str:
    """Markdown for one table cell: a `|` inside a code span must be escaped too.

    >>> cell("`{table|csv}`")
    '`{table\\\\|csv}`'
    """
    return markdown.replace("\\|", "|").replace("|", "\\|")
