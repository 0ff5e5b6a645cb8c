"""The package's structure: its modules import each other without a loop; its licence and citation agree with it."""

import ast
import graphlib

from conftest import ROOT

PACKAGE = ROOT / "emoprobe"


def emoprobe_imports(tree: ast.Module, modules: set[str]) -> set[str]:
    """The package's modules that ``tree`` imports anywhere, in functions too (a loop hidden in a function
    is still a loop: the two modules cannot be understood, or moved, one without the other)."""
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "emoprobe":
            imported |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("emoprobe."):
            imported.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("emoprobe.")}
    return imported


def test_the_packages_import_graph_has_no_loop():
    modules = {path.stem for path in PACKAGE.glob("*.py")} - {"__init__"}
    graph = {path.stem: emoprobe_imports(ast.parse(path.read_text()), modules) - {path.stem}
             for path in PACKAGE.glob("*.py")}
    assert len(graph) > 20 and graph["config"] >= {"architecture", "errors", "grid"}  # the graph was read
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as err:
        raise AssertionError(f"emoprobe's modules import each other in a loop: {' -> '.join(err.args[1])}") from None
    assert order.index("errors") < order.index("architecture") < order.index("config")


def test_the_licence_and_the_citation_agree_with_the_package():
    import tomllib

    import yaml

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert project["license"] == citation["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")
    assert citation["cff-version"] == "1.2.0" and citation["version"] == project["version"]
    assert [reference["doi"] for reference in citation["references"]] == [
        "10.18653/v1/2025.findings-acl.679", "10.1162/coli_a_00461"]  # the paper and the corpus
