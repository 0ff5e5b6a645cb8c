"""Each step's conda env holds exactly what its script imports, pinned as the pip install the workflow runs
with by default.

The static tests follow every rule's script through the emoprobe code it reaches (module-level imports of
every module it imports, function-level ones of every function it can call) to the distributions it
imports, and compare them with the rule's env. The slow ones build each env's pip part into a venv of its
own, as conda's pip step does (resolved and installed by uv's pip interface, which resolves exact pins as pip
does: pip took half a minute an env to unpack the same wheels again, uv links them from one cache), and run
there, without the launching venv on ``sys.path``, the import statements of its rules' scripts and of the
emoprobe functions they reach: a package the env lacks fails.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from importlib.metadata import packages_distributions as _packages_distributions
from pathlib import Path

import pytest
import yaml
from uv import find_uv_bin

from conftest import ROOT

PACKAGE = "emoprobe"
# How every env installs emoprobe; see the comment at the top of each envs/*.yaml.
EMOPROBE_ENTRY = "-e ${EMOPROBE_WORKFLOW}"
CONDA_DEPENDENCIES = ["python=3.11", "pip"]

# Distributions a step needs although nothing it runs imports them by name, keyed by the emoprobe
# function whose call needs them: an env must list them when its rule's script reaches that function.
RUNTIME_ONLY = {
    "emoprobe.models.prepare_gguf": {
        "gguf": "transformers reads and dequantises the GGUF tensors with gguf's GGUFReader and dequantize "
                "(ImportError without it)",
        "accelerate": "transformers' from_pretrained refuses a gguf_file without accelerate (ValueError)",
        "tokenizers": "the GGUF vocabulary becomes a tokenizers.Tokenizer; a dependency of transformers, "
                      "pinned as requirements.txt pins it",
        "safetensors": "save_pretrained(safe_serialization=True) writes the weights with it; a dependency of "
                       "transformers, pinned as requirements.txt pins it",
    },
    "emoprobe.models.load_decoder": {
        "tokenizers": "AutoTokenizer loads tokenizer.json with it; a dependency of transformers, pinned as "
                      "requirements.txt pins it",
        "safetensors": "from_pretrained(use_safetensors=True) reads the weights with it; a dependency of "
                       "transformers, pinned as requirements.txt pins it",
        "sentencepiece": "AutoTokenizer converts a model's tokenizer.model with it when the model has no "
                         "tokenizer.json (hub or local models; the bundled GGUF ones have one)",
    },
}


# --- the rules and their envs -----------------------------------------------------------------------

@functools.cache
def rules() -> dict[str, dict[str, Path | None]]:
    """Every rule of the workflow: its ``script`` and ``conda`` env file (absolute paths, or None)."""
    found = {}
    for path in [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]:
        text = path.read_text()
        starts = [m for m in re.finditer(r"^rule (\w+):", text, flags=re.M)]
        for start, end in zip(starts, starts[1:] + [None]):
            body = text[start.end():end.start() if end else len(text)]
            body = re.split(r"^\S", body, maxsplit=1, flags=re.M)[0]  # up to the next unindented line
            entry = {}
            for key in ("script", "conda"):
                value = re.search(rf'^\s+{key}:\s*\n\s+"([^"]+)"', body, flags=re.M)
                entry[key] = (path.parent / value.group(1)).resolve() if value else None
            assert start.group(1) not in found, f"rule {start.group(1)} defined twice"
            found[start.group(1)] = entry
    return found


def env_files() -> list[Path]:
    return sorted((ROOT / "envs").glob("*.yaml"))


def pip_section(path: Path) -> list[str]:
    env = yaml.safe_load(path.read_text())
    return next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))


def pins(lines) -> dict[str, str]:
    found = {}
    for line in lines:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)==([^\s#]+)\s*(#.*)?", line)
        if match:
            found[normalised(match.group(1))] = match.group(2)
    return found


def normalised(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def pip_pins():
    lines = []
    for name in ("requirements.txt", "requirements-models.txt"):
        lines += (ROOT / name).read_text().splitlines()
    return pins(lines)


def rules_of(env: Path) -> list[str]:
    return sorted(rule for rule, spec in rules().items() if spec["conda"] == env)


# --- what a script imports ----------------------------------------------------------------------------

def module_path(name: str) -> Path | None:
    """The source file of emoprobe module ``name`` (``emoprobe`` or ``emoprobe.x``), or None."""
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def is_emoprobe(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


class Source:
    """A parsed script or emoprobe module: its top-level definitions and the names its imports bind."""

    def __init__(self, name: str, path: Path):
        self.name, self.path = name, path
        self.tree = ast.parse(path.read_text(), str(path))
        self.defs = {node.name: node for node in self.tree.body
                     if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
        self.parents = {child: parent for parent in ast.walk(self.tree) for child in ast.iter_child_nodes(parent)}
        # name -> ("module", module) or ("object", module, attribute), from imports anywhere in the file
        self.bindings = {}
        for node in ast.walk(self.tree):
            if isinstance(node, ast.ImportFrom) and is_emoprobe(self.absolute(node)):
                for alias in node.names:
                    target = f"{self.absolute(node)}.{alias.name}"
                    self.bindings[alias.asname or alias.name] = (
                        ("module", target) if module_path(target) else ("object", self.absolute(node), alias.name))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if is_emoprobe(alias.name):
                        self.bindings[alias.asname or PACKAGE] = ("module", alias.name if alias.asname else PACKAGE)

    def absolute(self, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        package = self.name.split(".") if self.path.name == "__init__.py" else self.name.split(".")[:-1]
        package = package[:len(package) - node.level + 1]
        return ".".join(package + ([node.module] if node.module else []))

    def import_time_nodes(self):
        """The nodes run when the file is run or imported: all but the bodies of functions."""
        stack = [self.tree]
        while stack:
            node = stack.pop()
            yield node
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                stack.extend(node.decorator_list + node.args.defaults + [d for d in node.args.kw_defaults if d])
            else:
                stack.extend(ast.iter_child_nodes(node))

    def attribute_chain(self, name: ast.Name) -> list[str]:
        """``["b", "c"]`` for ``name`` used as ``a.b.c``."""
        chain, node = [], name
        while isinstance(parent := self.parents.get(node), ast.Attribute) and parent.value is node:
            chain.append(parent.attr)
            node = parent
        return chain


@functools.cache
def source(name: str) -> Source:
    return Source(name, module_path(name))


@dataclass
class Needs:
    """What running a script reaches: third-party top-level modules (with an example import of each),
    emoprobe functions and classes (``module.name``), and import statements outside emoprobe."""

    modules: dict[str, str] = field(default_factory=dict)
    reached: set[str] = field(default_factory=set)
    imports: list[str] = field(default_factory=list)

    @property
    def distributions(self) -> set[str]:
        return {distribution_of(module) for module in self.modules}

    @property
    def runtime_only(self) -> dict[str, str]:
        found = {}
        for function, needs in RUNTIME_ONLY.items():
            if function in self.reached:
                found.update(needs)
        return found


@functools.cache
def packages_distributions() -> dict[str, list[str]]:
    return _packages_distributions()


def distribution_of(module: str) -> str:
    distributions = sorted({normalised(d) for d in packages_distributions().get(module, [])})
    assert len(distributions) == 1, f"import {module}: installed by {distributions or 'no distribution'}"
    return distributions[0]


def registered_functions() -> list[str]:
    """Every ``"module:function"`` the experiment registry names (runners, directions readers)."""
    from emoprobe.experiments import EXPERIMENTS

    return [spec for entry in EXPERIMENTS.values() for spec in (entry.runner, entry.read_directions) if spec]


def script_needs(script: Path) -> Needs:
    """Everything the script can run, followed through emoprobe: the whole script, the import-time code of
    every emoprobe module imported on the way, and every function or class of emoprobe that reached code
    names (a module used other than as ``module.attribute``: all of its functions), and, where it reaches the
    engine's import by name (:func:`emoprobe.edits.implementation`), every function the experiment registry names."""
    needs = Needs()
    scripts = {"__main__": Source("__main__", script)}
    get = lambda name: scripts.get(name) or source(name)
    queue, seen = [("__main__", None)], set()
    while queue:
        unit = queue.pop()
        if unit in seen:
            continue
        seen.add(unit)
        module, name = unit
        code = get(module)
        if name is None:
            nodes = list(code.import_time_nodes()) if module != "__main__" else list(ast.walk(code.tree))
            if is_emoprobe(module) and "." in module:
                queue.append((module.rsplit(".", 1)[0], None))  # a package runs before its modules
        else:
            needs.reached.add(f"{module}.{name}")
            nodes = list(ast.walk(code.defs[name]))
            queue.append((module, None))
            if f"{module}.{name}" == "emoprobe.edits.implementation":  # imports by name what the registry names
                queue.extend(tuple(spec.split(":")) for spec in registered_functions())
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                imported = [code.absolute(node)] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                for target in imported:
                    if is_emoprobe(target):
                        queue.append((target, None))
                        if isinstance(node, ast.ImportFrom):
                            queue.extend((f"{target}.{a.name}", None) for a in node.names
                                         if module_path(f"{target}.{a.name}"))
                    elif target != "__future__" and target.split(".")[0] not in sys.stdlib_module_names:
                        needs.modules.setdefault(target.split(".")[0], ast.unparse(node))
                        if ast.unparse(node) not in needs.imports:
                            needs.imports.append(ast.unparse(node))
            elif isinstance(node, ast.Name):
                if node.id in code.defs and module != "__main__":
                    queue.append((module, node.id))
                elif node.id in code.bindings:
                    queue.extend(bound_units(code.bindings[node.id], code.attribute_chain(node)))
    return needs


def bound_units(binding: tuple, chain: list[str]) -> list[tuple[str, str | None]]:
    """The units reached by naming ``binding`` followed by the attributes ``chain``."""
    if binding[0] == "object":
        _, module, name = binding
        return [(module, name)] if name in source(module).defs else [(module, None)]
    module, units = binding[1], [(binding[1], None)]
    for attribute in chain:
        if module_path(f"{module}.{attribute}"):
            module = f"{module}.{attribute}"
            units.append((module, None))
        else:
            return units + ([(module, attribute)] if attribute in source(module).defs else [])
    return units + [(module, name) for name in source(module).defs]  # the module itself is passed around


# --- the static tests ----------------------------------------------------------------------------------

def test_every_rule_with_a_script_names_an_env_file_and_every_env_file_serves_a_rule():
    found = rules()
    for rule, spec in found.items():
        if spec["script"] is None:
            assert spec["conda"] is None, f"rule {rule} runs no script: it needs no env"
        else:
            assert spec["script"].is_file(), f"rule {rule}: {spec['script']}"
            assert spec["conda"] is not None and spec["conda"].is_file(), f"rule {rule}: env {spec['conda']}"
            assert spec["conda"].parent == ROOT / "envs", rule
    assert {spec["conda"] for spec in found.values()} - {None} == set(env_files())
    assert not (ROOT / "scripts" / PACKAGE).exists(), "jobs import the installed emoprobe, not a copy beside scripts/"


@pytest.mark.parametrize("env", env_files(), ids=lambda p: p.name)
def test_env_file_has_its_shape(env):
    spec = yaml.safe_load(env.read_text())
    assert spec["channels"] == ["conda-forge", "nodefaults"]
    *conda, pip = spec["dependencies"]
    assert conda == CONDA_DEPENDENCIES and list(pip) == ["pip"], f"{env.name}: conda deps {CONDA_DEPENDENCIES} + pip"
    assert pip_section(env).count(EMOPROBE_ENTRY) == 1, f"{env.name}: emoprobe installed as {EMOPROBE_ENTRY!r}"
    others = [line for line in pip_section(env) if line != EMOPROBE_ENTRY]
    assert len(pins(others)) == len(others), f"{env.name}: every other pip dependency is pinned with =="
    assert list(pins(others)) == sorted(pins(others)), f"{env.name}: pip dependencies in alphabetical order"


@pytest.mark.parametrize("env", env_files(), ids=lambda p: p.name)
def test_env_header_names_the_rules_that_use_it(env):
    header = env.read_text().splitlines()[0]
    named = re.fullmatch(r"# Conda env of rules? ([\w, ]+): .+", header)
    assert named and sorted(named.group(1).split(", ")) == rules_of(env), (header, rules_of(env))


def test_env_pins_equal_the_pip_pins():
    reference = pip_pins()
    for path in env_files():
        for package, version in pins(pip_section(path)).items():
            assert reference.get(package) == version, f"{path.name}: {package}=={version}, pip has {reference.get(package)}"


@pytest.mark.parametrize("rule", sorted(r for r, spec in rules().items() if spec["script"]))
def test_env_holds_exactly_what_the_rule_imports(rule):
    spec = rules()[rule]
    needs = script_needs(spec["script"])
    expected = (needs.distributions - {PACKAGE}) | set(needs.runtime_only)
    listed = set(pins(pip_section(spec["conda"])))
    missing = {d: needs.runtime_only.get(d) or next(i for m, i in needs.modules.items() if distribution_of(m) == d)
               for d in expected - listed}
    assert not missing, f"rule {rule}: {spec['conda'].name} lacks {missing}"
    assert listed <= expected, (f"rule {rule}: {spec['conda'].name} lists {sorted(listed - expected)}, which it "
                                f"neither imports nor needs at run time (give the rule a smaller env)")


def test_the_import_analysis_follows_functions_not_whole_modules():
    # prepare_prompts calls corpus.stratified_subsample (sklearn, imported in the function); localise never
    # reaches emoprobe.models; a parse-time function of emoprobe.config (snakemake, jsonschema) is no job's.
    assert "sklearn" in script_needs(ROOT / "scripts/prepare_prompts.py").modules
    localise = script_needs(ROOT / "scripts/localise.py")
    assert "torch" not in localise.modules and "emoprobe.models.load_decoder" not in localise.reached
    for script in (ROOT / "scripts").glob("*.py"):
        needs = script_needs(script)
        assert not {"snakemake", "jsonschema"} & set(needs.modules), script.name
    assert "emoprobe.models.prepare_gguf" in script_needs(ROOT / "scripts/prepare_gguf_model.py").reached


def test_installed_versions_are_the_pinned_ones():
    from importlib.metadata import version

    for package, pinned in pip_pins().items():
        assert version(package).split("+")[0] == pinned, package


# --- the slow tests: each env built alone -----------------------------------------------------------

def base_python() -> str:
    """The Python the launching venv was made from (a venv's python would see nothing else anyway)."""
    return getattr(sys, "_base_executable", sys.executable)


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory):
    """Every env's pinned packages with all they depend on, and emoprobe's build backend, downloaded once
    from the registry by pip. Each env then resolves and installs from here alone (--no-index): pip's own
    cache would still fetch every index page again, and keeps no wheel the registry marks uncacheable."""
    directory = tmp_path_factory.mktemp("wheelhouse")
    pinned = sorted({line for env in env_files() for line in pip_section(env) if line != EMOPROBE_ENTRY})
    backend = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    downloaded = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(directory),
                                 *pinned, *backend], capture_output=True, text=True)
    assert downloaded.returncode == 0, downloaded.stdout[-3000:] + downloaded.stderr[-3000:]
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def uv_cache(tmp_path_factory):
    """uv's cache for the envs' venvs: each wheel unpacked once, hard-linked into every venv that installs it (the
    cache and the venvs on one file system, both under pytest's temporary folder)."""
    directory = tmp_path_factory.mktemp("uv-cache")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def venv(tmp_path):
    """Where a test builds a venv, removed afterwards (its files are mostly links into the uv cache)."""
    yield tmp_path / "venv"
    shutil.rmtree(tmp_path / "venv", ignore_errors=True)


CHECK_IMPORTS = """
import json, sys
failed = {}
for statement in json.loads(sys.argv[1]):
    try:
        exec(statement, {})
    except Exception as err:
        failed[statement] = f"{type(err).__name__}: {err}"
import emoprobe
print(json.dumps({"failed": failed, "path": sys.path, "emoprobe": emoprobe.__file__}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("env", env_files(), ids=lambda p: p.stem)
def test_env_alone_imports_what_its_rules_run(env, tmp_path, wheelhouse, uv_cache, venv):
    python = base_python()
    version = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    if f"python={version}" not in CONDA_DEPENDENCIES:
        pytest.skip(f"the envs want {CONDA_DEPENDENCIES[0]}, this machine's Python is {version}")
    started = time.monotonic()
    subprocess.run([python, "-m", "venv", "--without-pip", str(venv)], check=True)
    # conda's pip step (conda/env/installers/pip.py): the pip section as a requirements file beside the
    # copy of the env file that Snakemake makes in .snakemake/conda/ of the working directory, and
    # "pip install -U -r" run from there, dependencies included, so that the env's pins must be enough.
    # Only the wheels come from the wheelhouse, and nothing is compiled to bytecode.
    conda_dir = tmp_path / "workdir/.snakemake/conda"
    conda_dir.mkdir(parents=True)
    requirements = conda_dir / "condaenv.test.requirements.txt"
    requirements.write_text("\n".join(pip_section(env)) + "\n")
    # The launching environment without PYTHONPATH (or any other variable), and the variable the workflow sets
    # when it is parsed (rules/common.smk); uv reads no config file or variable of the machine's.
    clean = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    clean.update(EMOPROBE_WORKFLOW=str(ROOT), UV_CACHE_DIR=str(uv_cache), UV_NO_CONFIG="1", UV_LINK_MODE="hardlink")
    installed = subprocess.run([find_uv_bin(), "pip", "install", "--quiet", "--python", str(venv / "bin/python"),
                                "--no-index", "--find-links", str(wheelhouse), "-U", "-r", str(requirements)],
                               cwd=conda_dir, env=clean, capture_output=True, text=True)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    built = time.monotonic() - started

    statements = []
    for rule in rules_of(env):
        script = rules()[rule]["script"]
        tree = ast.parse(script.read_text())
        statements += [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
        needs = script_needs(script)
        statements += needs.imports  # function-level imports of the emoprobe code it reaches
        statements += [f"import {top_level(d)}" for d in needs.runtime_only]
    statements = list(dict.fromkeys(statements))
    checked = subprocess.run([str(venv / "bin/python"), "-I", "-c", CHECK_IMPORTS, json.dumps(statements)],
                             cwd=tmp_path, env={k: v for k, v in clean.items() if not k.startswith(("UV_", "EMO"))},
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr[-3000:]
    result = json.loads(checked.stdout.splitlines()[-1])
    assert not result["failed"], f"{env.name} (rules {', '.join(rules_of(env))}) alone: {result['failed']}"
    launching = Path(sys.prefix).resolve()
    assert not [p for p in result["path"] if Path(p).resolve().is_relative_to(launching)], result["path"]
    assert Path(result["emoprobe"]).resolve() == (ROOT / PACKAGE / "__init__.py").resolve()
    print(f"{env.name}: built in {built:.0f} s, {len(statements)} import statements checked")


def top_level(distribution: str) -> str:
    """The module a distribution installs (``sentencepiece`` -> ``sentencepiece``)."""
    modules = sorted(m for m, ds in packages_distributions().items()
                     if distribution in {normalised(d) for d in ds} and not m.startswith("_"))
    assert modules, distribution
    return modules[0]
