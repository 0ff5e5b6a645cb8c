"""Checks of the workflow config beyond its JSON schema, and what is derived from it.

Only the standard library is imported here: this runs every time Snakemake
parses the workflow.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import string
from pathlib import Path
from typing import NamedTuple

from emoprobe import experiments, grid
from emoprobe.architecture import describe_models
from emoprobe.errors import ConfigError


def schema_errors(config: dict, schema: dict) -> list[str]:
    """Every violation of ``schema`` by ``config``, one line each, naming the key path.

    Snakemake's own ``validate`` (which also fills in defaults) reports only the
    first error, with the whole schema printed; these lines are what a user reads.
    """
    import jsonschema

    lines, config = [], dict(config)
    for section, key, instead in MOVED_KEYS:
        if isinstance(config.get(section), dict) and key in config[section]:
            lines.append(f"{section}.{key}: no longer a setting; {instead}")
            config[section] = {k: v for k, v in config[section].items() if k != key}
    validator = jsonschema.Draft202012Validator(schema)
    for error in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path))):
        key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        if error.validator == "additionalProperties":
            allowed = sorted(error.schema.get("properties", {}))
            message = f"{error.message}; allowed keys: {allowed}" if allowed else error.message
        elif "propertyNames" in error.schema_path:
            message = f"{error.instance!r} is not a valid name: use letters, digits, '.', '_' and '-' only"
        else:
            message = error.message
        lines.append(f"{key}: {message}")
    return lines


def duplicate_keys(path: str | Path) -> list[str]:
    """Keys given twice in one mapping of a YAML file, with their lines (YAML loaders keep the last silently)."""
    import yaml

    found = []

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    found.append(f"{key!r} (line {key_node.start_mark.line + 1})")
                seen.add(key)
            return super().construct_mapping(node, deep)

    with open(path) as handle:
        yaml.load(handle, Loader=Loader)
    return found


# Keys of earlier versions, and what says the same now: named before the schema's "additional property" would be.
MOVED_KEYS = [("probe", "control", "say where the shuffled-label control is fitted with control: true in the "
                                   "entries of probe.grid (schemas/config.schema.yaml)")]


def prepare_config(config: dict, configfiles: list, schema_path: str | Path, workdir: Path,
                   ask_hub: bool = True) -> None:
    """Check the workflow's config and complete it in place, in the order a user's mistakes are best
    reported: keys given twice in a config file, every schema violation at once, then (the schema's
    defaults filled in) each model described by itself (:func:`emoprobe.architecture.describe_models`)
    and the checks across keys (:func:`check_config`). ``ask_hub``: whether hub models may be looked up online
    (the workflow's main process; never its jobs). Raises :class:`ConfigError`."""
    import yaml
    from snakemake.utils import validate

    for path in configfiles:
        if duplicates := duplicate_keys(path):
            raise ConfigError(f"{path}: keys given twice: {', '.join(duplicates)}")
    with open(schema_path) as handle:
        schema = yaml.safe_load(handle)
    typed = _typed(config, schema)  # before the schema: --config gives nested values as strings
    config.clear()
    config.update(typed)
    if errors := schema_errors(config, schema):
        raise ConfigError("\n  " + "\n  ".join(errors))
    validate(config, schema=str(schema_path))  # fills in the defaults
    describe_models(config, workdir, ask_hub)
    check_config(config)
    canonical = canonical_config(config, schema)
    config.clear()
    config.update(canonical)


def canonical_config(config: dict, schema: dict) -> dict:
    """``config`` as one value whatever its form: every mapping's keys sorted, every value typed as the schema
    types it (``1`` for an integer, ``1.0`` for a number, however written), and ``dataset.labels`` sorted (a set:
    label ids follow their sorted order). Every param the rules build from it is then the same for configs that say
    the same thing, so that a config written back in another key order, with ``C: 1`` for ``C: 1.0``, or given by
    ``--config``, reruns nothing. Lists keep their order otherwise: it is the order of the outputs' rows."""
    config = _sorted_keys(_typed(config, schema))
    config["dataset"]["labels"] = sorted(config["dataset"]["labels"])
    return config


def _sorted_keys(value):
    """``value`` with the keys of every mapping in it sorted, at every depth."""
    if isinstance(value, dict):
        return {key: _sorted_keys(value[key]) for key in sorted(value, key=str)}
    if isinstance(value, list):
        return [_sorted_keys(item) for item in value]
    return value


def _typed(value, schema: dict):
    """``value`` with each scalar converted to the type its schema gives it: an integer-valued float where the
    schema says ``integer``, an int where it says ``number`` (JSON schema accepts either for either), and a string
    that reads as the number or boolean the schema asks for (``--config`` gives nested values as strings) as that.
    A YAML null (``null``, ``Null``, ``NULL``, ``~``) given as a string where the schema allows null is None:
    ``--config 'dataset={url: null}'`` reaches the workflow as the string ``"null"``, since Snakemake reads
    ``--config`` values with YAML's base loader, which types nothing. Anything else is left for the schema to
    judge."""
    if isinstance(value, str) and value in YAML_NULLS and _allows_null(schema):
        return None
    json_type = "array" if isinstance(value, list) else "object" if isinstance(value, dict) else None
    for alternative in schema.get("oneOf", []) + schema.get("anyOf", []):
        if json_type in _types(alternative) or (json_type is None and {"integer", "number"} & set(_types(alternative))):
            schema = alternative
            break
    types = _types(schema)
    if isinstance(value, str) and "string" not in types and types:
        import yaml

        try:
            read = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        if isinstance(read, str) and {"integer", "number"} & set(types):
            try:
                read = float(read)  # YAML 1.1 reads 1e-4 as a string
            except ValueError:
                return value
        if isinstance(read, (bool, int, float)) and not isinstance(read, str):
            value = read
        else:
            return value
    if isinstance(value, bool):
        return value
    if isinstance(value, float) and "integer" in types and value.is_integer():
        return int(value)
    if isinstance(value, int) and "number" in types and "integer" not in types:
        return float(value)
    if isinstance(value, dict):
        properties, extra = schema.get("properties", {}), schema.get("additionalProperties")
        return {key: _typed(item, properties.get(key, extra if isinstance(extra, dict) else {}))
                for key, item in value.items()}
    if isinstance(value, list):
        return [_typed(item, schema.get("items", {})) for item in value]
    return value


# The spellings of null in YAML 1.1 and 1.2 but the empty string (an empty value, which Snakemake's --config already
# reads as None at the top level, and which a config file may mean as a string).
YAML_NULLS = frozenset({"null", "Null", "NULL", "~"})


def _allows_null(schema: dict) -> bool:
    """Whether ``schema`` accepts null: by its type, or by one of its ``oneOf`` or ``anyOf`` alternatives."""
    return ("null" in _types(schema) or None in schema.get("enum", ())
            or any(_allows_null(alternative) for alternative in schema.get("oneOf", []) + schema.get("anyOf", [])))


def _types(schema: dict) -> list[str]:
    """The JSON types a schema names (``type`` as a string or a list)."""
    types = schema.get("type", [])
    return [types] if isinstance(types, str) else list(types)


def count_records(path: str | Path) -> int | None:
    """Number of records of a CSV file with a header row, or None when there is no such file.

    Read as Latin-1, which decodes any byte, so this counts records whatever the file's encoding.
    """
    import csv

    if not Path(path).is_file():
        return None
    with open(path, encoding="latin-1", newline="") as handle:
        return max(sum(1 for row in csv.reader(handle) if row) - 1, 0)


# Modules that decide no number a job writes (messages, config checks, allocator settings, progress lines, the hub
# lookup, whose commit and file patterns are params of the rules they decide): a change to them reruns nothing.
NEUTRAL_MODULES = frozenset({"errors", "config", "memory", "architecture", "progress", "hub"})


def code_sha256(script: str | Path, package: str | Path, modules: tuple[str, ...] = ()) -> str:
    """sha256 of the code of the modules of ``package`` that ``script`` imports, directly or through
    one another, and of ``modules`` (those it runs by name, as an experiment's runner) and what they import, but
    :data:`NEUTRAL_MODULES` and the package's ``__init__``.

    A param of the script's rule, it reruns the rule when that code changes; Snakemake's own code
    trigger watches the script only. What is hashed is each module's syntax tree without its
    docstrings, so that editing a comment, a docstring or the layout reruns nothing (a new Python
    version, whose trees may differ, reruns everything once).
    """
    package = Path(package)
    sources = {name: (package / f"{name}.py").read_text() for name in modules}
    pending = [Path(script).read_text(), *sources.values()]
    while pending:
        for name in _module_code(pending.pop(), package.name).imports:
            if name not in sources and name not in NEUTRAL_MODULES and (package / f"{name}.py").is_file():
                sources[name] = (package / f"{name}.py").read_text()
                pending.append(sources[name])
    digest = hashlib.sha256()
    for name in sorted(sources):
        digest.update(f"{name}\n{_module_code(sources[name], package.name).tree}\n".encode())
    return digest.hexdigest()


class _ModuleCode(NamedTuple):
    imports: tuple[str, ...]  # the modules of the package it imports, anywhere in the file
    tree: str  # ast.dump of its syntax tree without docstrings


@functools.lru_cache(maxsize=256)
def _module_code(source: str, package: str) -> _ModuleCode:
    """What :func:`code_sha256` reads of one file's ``source``, once per process: every rule's params hash the modules
    its script reaches, and Snakemake parses the workflow again in every job and dry run. Keyed by the text itself, so
    that an edited file is read anew."""
    tree = ast.parse(source)
    imports = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == package:
            imports += [alias.name for alias in node.names]  # from package import module
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(package + "."):
            imports.append(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            imports += [a.name.split(".")[1] for a in node.names if a.name.startswith(package + ".")]
    return _ModuleCode(tuple(imports), ast.dump(without_docstrings(tree)))


def without_docstrings(tree: ast.Module) -> ast.Module:
    """``tree`` with the docstring of the module and of each class and function removed, in place."""
    for node in ast.walk(tree):
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body
                and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
                and isinstance(node.body[0].value.value, str)):
            node.body = node.body[1:] or [ast.Pass()]
    return tree


def check_template(template: str) -> None:
    """Raise :class:`ConfigError` unless ``template`` has exactly one field, ``{text}``."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as err:
        raise ConfigError(f"prompt.template: {err} in {template!r}") from None
    if fields != ["text"]:
        raise ConfigError(f"prompt.template: must contain {{text}} exactly once and no other field, has {fields}")


def prompt_template(prompt: dict) -> str:
    """The template text of ``prompt.template``: the named entry of ``prompt.templates``, else the value itself."""
    template = prompt["template"]
    if template in prompt.get("templates", {}):
        template = prompt["templates"][template]
    elif "{" not in template:
        raise ConfigError(
            f"prompt.template: {template!r} is neither a name in prompt.templates "
            f"{sorted(prompt.get('templates', {}))} nor a template with a {{text}} field"
        )
    check_template(template)
    return template


def check_config(config: dict) -> None:
    """Raise :class:`ConfigError` on what the schema cannot express, once each model is described (its source and
    files are checked there, :func:`emoprobe.architecture.describe_models`).

    Checks the prompt template; that the model's answer can be read (position -1); the label renaming, the appraisal
    positions and the answer words against the labels and positions; ``dataset.limit`` against the labels; model
    names as file names; the layer chunk sizes against each model's depth; the probe grid and the conditional
    probes' cells (:mod:`emoprobe.grid`); the non-linear probes' locations; and the experiments
    (:func:`check_interventions`).
    """
    prompt_template(config["prompt"])
    if -1 not in config["positions"]:
        raise ConfigError(f"positions: {config['positions']} must include -1, where the model's answer is read")

    dataset = config["dataset"]
    stray = sorted(set(dataset["rename"].values()) - set(dataset["labels"]))
    if stray:
        raise ConfigError(f"dataset.rename: renames to {stray}, which are not in dataset.labels")
    stray = sorted(set(config["appraisal"]["positions"]) - set(config["positions"]))
    if stray:
        raise ConfigError(f"appraisal.positions: {stray} are not among the extracted positions {config['positions']}")
    stray = sorted(set(config["answer"]["words"]) - set(dataset["labels"]))
    if stray:
        raise ConfigError(f"answer.words: {stray} are not in dataset.labels {dataset['labels']}")
    if 0 < dataset["limit"] < len(dataset["labels"]):
        raise ConfigError(
            f"dataset.limit: {dataset['limit']} is fewer than the {len(dataset['labels'])} labels; "
            "use 0 for all texts or at least one text per label"
        )

    global_size = config["extraction"].get("layer_chunk_size")
    for name, model in config["models"].items():
        if name in (".", "..") or "/" in name:
            raise ConfigError(f"models: name {name!r} is not a safe file name")
        for key, size in (("models." + name + ".layer_chunk_size", model.get("layer_chunk_size")),
                          ("extraction.layer_chunk_size", global_size if "layer_chunk_size" not in model else None)):
            if size is not None and not 1 <= size <= model["n_layers"]:
                raise ConfigError(f"{key}: {size} is not between 1 and the {model['n_layers']} layers of {name}")
    try:
        cells = grid.cells(config)
        grid.conditional_cells(config)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    nonlinear = config["probe"]["nonlinear"]
    if nonlinear["fit"] and nonlinear["locations"] != "all":
        stray = [location for location in nonlinear["locations"] if location not in config["locations"]]
        if stray:
            raise ConfigError(f"probe.nonlinear.locations: {stray} are not among the configured locations "
                              f"{config['locations']}")
        if not grid.nonlinear_locations(config, cells):
            raise ConfigError(f"probe.nonlinear.locations: {nonlinear['locations']}: the grid (probe.grid) fits no "
                              "problem at token -1 there, where the non-linear probes are fitted")
    check_interventions(config)


def check_interventions(config: dict) -> None:
    """Raise :class:`ConfigError` on intervention settings the schema cannot judge: a window wider than a
    model, and what each configured experiment's own check refuses (:attr:`emoprobe.experiments.Experiment.check`:
    emotions that are not labels, recipes naming appraisals that are not rated, probe directions the configured
    probes do not fit)."""
    settings = config["interventions"]
    configured = settings["experiments"]
    for experiment in experiments.editing(configured):  # the others edit no window
        span = settings[experiment]["span"]
        for name, model in config["models"].items():
            if span > model["n_layers"]:
                raise ConfigError(f"interventions.{experiment}.span: {span} is more than the {model['n_layers']} "
                                  f"layers of {name}")
    for experiment in configured:
        experiments.EXPERIMENTS[experiment].check(config)
