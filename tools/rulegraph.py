"""Write the workflow's rule graph (``snakemake --rulegraph mermaid-js`` of config.yaml) into docs/pipeline.md.

    .venv/bin/python tools/rulegraph.py          (make docs)

``tests/test_workflow.py`` fails when the graph there is not the workflow's.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "docs/pipeline.md"
START = "<!-- rule graph: written by tools/rulegraph.py (make docs) from config.yaml; do not edit by hand -->"
END = "<!-- end of rule graph -->"


def rulegraph() -> str:
    """The rule graph of the workflow with config.yaml, in mermaid-js: Snakemake's, with its numbered nodes named by
    their rules, edges sorted and colours dropped, so that the same rules give the same text (Snakemake's order of
    nodes and edges varies from run to run)."""
    found = subprocess.run([sys.executable, "-m", "snakemake", "--rulegraph", "mermaid-js", "--quiet", "all"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout
    names = dict(re.findall(r"^\s*(id\d+)\[(\w+)\]\s*$", found, flags=re.M))
    edges = sorted((names[a], names[b]) for a, b in re.findall(r"^\s*(id\d+) --> (id\d+)\s*$", found, flags=re.M))
    if not names or not edges:
        raise ValueError(f"no rule graph in what snakemake printed: {found[:500]!r}")
    return "\n".join(["flowchart LR"] + [f"    {a} --> {b}" for a, b in edges])


def with_graph(text: str, graph: str) -> str:
    """``text`` (docs/pipeline.md) with the block between :data:`START` and :data:`END` replaced by ``graph``."""
    if START not in text or END not in text:
        raise ValueError(f"{PIPELINE} has no rule graph block ({START!r} ... {END!r})")
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    return f"{before}{START}\n```mermaid\n{graph}\n```\n{END}{after}"


if __name__ == "__main__":
    PIPELINE.write_text(with_graph(PIPELINE.read_text(), rulegraph()))
