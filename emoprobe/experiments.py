"""The experiments on the model's forward pass that ``interventions.experiments`` may name: one entry each.

An entry holds everything particular to its experiment: what it edits and reads (the plan's inputs, params and
targets, :mod:`emoprobe.plan`), its config check (:mod:`emoprobe.config`), its conditions per window (the job
estimates, :mod:`emoprobe.jobs`), the line its job logs, its runner and the reader of its directions (run by the
generic ``scripts/run_intervention.py`` through :func:`emoprobe.edits.run_experiment`), its panel in the combined
heatmap or the figure of its own (:mod:`emoprobe.figures`). Adding an experiment is an entry here, its settings'
section in the schema (``interventions.<name>``), and its runner's module. Only the standard library and the
stdlib-only :mod:`emoprobe.grid` and :mod:`emoprobe.errors` are imported here: this runs every time Snakemake
parses the workflow; runners and readers are named ``"module:function"`` and imported by the job that runs them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from emoprobe import grid
from emoprobe.errors import ConfigError


def _no_check(config: dict) -> None:
    """An experiment whose settings the schema judges whole."""


@dataclass(frozen=True)
class Experiment:
    """What one experiment does to the model, what it reads, how it is run, and where it is drawn."""

    conditions: Callable[[dict, list[str]], int] | None
    """Its conditions per window, from the ``interventions`` section and the labels (``None``: it edits nothing)."""
    summary: Callable[[dict, list[str]], str] | None
    """What its job's first log line says it edits, from its settings (:func:`emoprobe.plan.intervention_settings`)
    and the labels."""
    runner: str | None = None
    """``"module:function"``, ``function(run: emoprobe.edits.ExperimentInputs) -> DataFrame``,
    its tidy table. ``None``: it edits nothing, only reads the forward pass (its own rule, ``attend``)."""
    per_location: bool = False
    """It edits each of ``interventions.locations`` in turn; its table is drawn beside the probes in the
    combined heatmap (:attr:`heatmap`) and the depth figure."""
    heatmap: tuple[str, str] | None = None
    """Its panel in the combined heatmap: the table's column of shares and the panel's title."""
    directions: str | None = None
    """The directions it pushes along: ``emotion`` (the residual stream's emotion probes at token -1, as
    ``interventions.<name>.probe`` names them), ``appraisal`` (the appraisal probes), or none."""
    read_directions: str | None = None
    """``"module:function"``, ``function(paths, settings, layers, provenance)``, its directions
    as the runner takes them; raises :class:`emoprobe.edits.NothingToRun` where the files hold none to push."""
    figure: str | None = None
    """The function of :mod:`emoprobe.figures` drawing the figure of its own, ``(table, model, png, pdf)``."""
    check: Callable[[dict], None] = _no_check
    """Raises :class:`emoprobe.errors.ConfigError` on its settings where the schema cannot judge them."""

    @property
    def edits(self) -> bool:
        """It runs the model with an edit in windows of layers (``span``, ``every``): an ``intervene`` job and a table
        per model."""
        return self.runner is not None


def _check_promotion(config: dict) -> None:
    labels = config["dataset"]["labels"]
    settings = config["interventions"]["promotion"]
    stray = [e for e in settings["emotions"] if e not in labels]
    if stray:
        raise ConfigError(f"interventions.promotion.emotions: {stray} are not in dataset.labels {labels}")
    probe = settings["probe"]
    if probe not in grid.problems(config["probe"]):
        raise ConfigError(f"interventions.promotion.probe: {probe} is not a probe the workflow fits "
                          f"(probe.subsets and probe.answer_probe give {grid.problems(config['probe'])})")
    cell = grid.cells(config)["residual"].get(probe, {}).get(-1)
    if cell is None or not cell.directions:
        raise ConfigError(f"interventions.promotion.probe: promotion steers along {probe}'s directions in the "
                          f"residual stream at token -1, and probe.grid fits none there; add "
                          f"{{locations: [residual], positions: [-1], problems: [{probe}], directions: true}} "
                          f"to probe.grid")


def _check_surgery(config: dict) -> None:
    columns = config["dataset"]["appraisal_columns"]
    if not columns:
        raise ConfigError("interventions.experiments: surgery pushes along the appraisal probes, and "
                          "dataset.appraisal_columns names none")
    for recipe, parts in config["interventions"]["surgery"]["recipes"].items():
        stray = [a for a in [*parts["push"], *parts["hold"]] if a not in columns]
        if stray:
            raise ConfigError(f"interventions.surgery.recipes.{recipe}: {stray} are not in dataset.appraisal_columns "
                              f"{columns}")
        both = sorted(set(parts["push"]) & set(parts["hold"]))
        if both:
            raise ConfigError(f"interventions.surgery.recipes.{recipe}: {both} are both pushed and held")


def _each_location(section: dict, labels: list[str]) -> int:
    return len(section["locations"])


def _locations(settings: dict, labels: list[str]) -> str:
    return f"locations {', '.join(settings['locations'])}"


EXPERIMENTS: dict[str, Experiment] = {
    "zero": Experiment(
        runner="emoprobe.ablation:run_zero", per_location=True, heatmap=("unchanged", "answers changed by zero ablation"),
        conditions=_each_location, summary=_locations),
    "random": Experiment(
        runner="emoprobe.ablation:run_random", per_location=True, heatmap=("unchanged", "answers changed by random ablation"),
        conditions=_each_location, summary=_locations),
    "patching": Experiment(
        runner="emoprobe.ablation:run_patching", per_location=True,
        heatmap=("transfer", "patching: source's answer transferred"), conditions=_each_location, summary=_locations),
    "promotion": Experiment(
        runner="emoprobe.steering:run_promotion", directions="emotion", read_directions="emoprobe.steering:emotion_directions",
        figure="plot_promotion", check=_check_promotion,
        conditions=lambda section, labels: (len(section["promotion"]["emotions"] or labels)
                                            * len(section["promotion"]["betas"])),
        summary=lambda settings, labels: (f"{len(settings['emotions'] or labels)} emotions x "
                                          f"{len(settings['betas'])} betas")),
    "surgery": Experiment(
        runner="emoprobe.steering:run_surgery", directions="appraisal", read_directions="emoprobe.steering:appraisal_directions",
        figure="plot_surgery", check=_check_surgery,
        conditions=lambda section, labels: ((len(section["surgery"]["recipes"]) + section["surgery"]["random_controls"])
                                            * len(section["surgery"]["betas"])),
        summary=lambda settings, labels: (f"{len(settings['recipes'])} recipes and {settings['random_controls']} "
                                          f"random controls x {len(settings['betas'])} betas")),
    "attention": Experiment(conditions=None, summary=None),
}


def editing(names: list[str] | None = None) -> list[str]:
    """Of ``names`` (default: every experiment), those that edit the model (an ``intervene`` job each)."""
    return [name for name in (EXPERIMENTS if names is None else names) if EXPERIMENTS[name].edits]


def per_location(names: list[str] | None = None) -> list[str]:
    """Of ``names`` (default: every experiment), those that edit each location in turn (the heatmap's), in the
    registry's order (the heatmap's panels)."""
    return [name for name, experiment in EXPERIMENTS.items()
            if experiment.per_location and name in (EXPERIMENTS if names is None else names)]


def with_figure(names: list[str] | None = None) -> list[str]:
    """Of ``names`` (default: every experiment), those drawn in a figure of their own, in the registry's order."""
    return [name for name, experiment in EXPERIMENTS.items()
            if experiment.figure and name in (EXPERIMENTS if names is None else names)]


def modules(name: str) -> tuple[str, ...]:
    """The modules of :mod:`emoprobe` that run experiment ``name`` though the generic script does not import them (its
    runner's and its directions reader's), by their names in the package: their code is part of its job's code
    hash."""
    entry = EXPERIMENTS[name]
    return tuple(sorted({spec.split(":")[0].removeprefix("emoprobe.") for spec in (entry.runner, entry.read_directions)
                         if spec and spec.startswith("emoprobe.")}))
