"""The experiments on the model's forward pass that ``interventions.experiments`` may name, and what each needs.

The one list that the rules' plan (:mod:`emoprobe.plan`: inputs, params, targets) and the config check
(:mod:`emoprobe.config`) read. Adding an experiment is an entry here, its name and section in the schema, its
runner (:data:`emoprobe.interventions.RUNNERS`), its conditions per window for the runtime requests
(:func:`emoprobe.jobs.intervention_conditions`), and what ``scripts/run_intervention.py`` reads for its
directions, where it has any. Only the standard library is imported here: this runs every time Snakemake parses
the workflow.
"""

from __future__ import annotations

from typing import NamedTuple


class Experiment(NamedTuple):
    """What one experiment does to the model, what it reads, and where it is drawn."""

    edits: bool
    """It runs the model with an edit in windows of layers (``span``, ``every``): one ``intervene`` job and table
    per model. Otherwise it only reads the forward pass (rule ``attend``)."""
    per_location: bool
    """It edits each of ``interventions.locations`` in turn; its table is drawn beside the probes in the
    combined heatmap and the depth figure."""
    directions: str | None
    """The directions it pushes along: ``emotion`` (the residual stream's emotion probes at token -1),
    ``appraisal`` (the appraisal probes), or none. Those with directions have a figure of their own."""


EXPERIMENTS = {
    "zero": Experiment(edits=True, per_location=True, directions=None),
    "random": Experiment(edits=True, per_location=True, directions=None),
    "patching": Experiment(edits=True, per_location=True, directions=None),
    "promotion": Experiment(edits=True, per_location=False, directions="emotion"),
    "surgery": Experiment(edits=True, per_location=False, directions="appraisal"),
    "attention": Experiment(edits=False, per_location=False, directions=None),
}


def editing(names: list[str] | None = None) -> list[str]:
    """Of ``names`` (default: every experiment), those that edit the model (an ``intervene`` job each)."""
    return [name for name in (EXPERIMENTS if names is None else names) if EXPERIMENTS[name].edits]


def per_location(names: list[str] | None = None) -> list[str]:
    """Of ``names`` (default: every experiment), those that edit each location in turn (the heatmap's), in the
    registry's order (the heatmap's panels)."""
    return [name for name, experiment in EXPERIMENTS.items()
            if experiment.per_location and name in (EXPERIMENTS if names is None else names)]


def steering(names: list[str] | None = None) -> list[str]:
    """Of ``names`` (default: every experiment), those that push along directions (a figure of their own), in the
    registry's order."""
    return [name for name, experiment in EXPERIMENTS.items()
            if experiment.directions and name in (EXPERIMENTS if names is None else names)]
