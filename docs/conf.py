"""Sphinx configuration: MyST Markdown pages in the Diataxis layout. The configuration and
command line references are generated from the code at build time (docs/_ext/)."""

import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent))  # spawner_ext, when it is not installed

project = "gpuhub"
extensions = ["myst_parser", "traits_reference", "argparse_reference"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3
html_theme = "alabaster"
