"""Sphinx configuration: MyST Markdown pages in the Diataxis layout."""

project = "gpuhub"
extensions = ["myst_parser"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3
html_theme = "alabaster"
