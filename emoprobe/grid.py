"""Which probes are fitted where: the cells of ``probe.grid``.

A cell is one (location, problem, token position); at each layer of the location, a cell's probe is fitted over
the folds, with its shuffled-label control where the grid asks for one, and once more on all of the problem's
texts (the probe whose weights steering reads, its *directions*) where the grid asks for those. A problem is
``{subset}/label`` for each of ``probe.subsets``, and ``all/answer`` with ``probe.answer_probe``.

``probe.grid`` is a list of entries, each the product of the locations, positions and problems it names (``all``
for every configured one); a cell in several entries has a control (directions) when any of them asks. Cells in
no entry are not fitted: their rows are absent from the tables, and every figure and table that would show
them says so (:func:`describe`).

Only the standard library is imported here: this runs every time Snakemake parses the workflow.
"""

from __future__ import annotations

from typing import NamedTuple


# The baselines every model's probes are compared with: the rows of accuracy.tsv that are not probes of a
# hidden-state location, in the order they follow them (appraisal_ratings where the corpus has appraisal ratings).
BASELINES = ("logit_lens", "text", "appraisal_ratings")


class Cell(NamedTuple):
    """What is fitted at one (location, problem, position) of the grid."""

    control: bool
    directions: bool


def problems(probe: dict) -> list[str]:
    """The probing problems the config defines, ``subset/target``, in table order."""
    return [f"{subset}/label" for subset in probe["subsets"]] + (["all/answer"] if probe["answer_probe"] else [])


def cells(config: dict) -> dict[str, dict[str, dict[int, Cell]]]:
    """``{location: {problem: {position: Cell}}}`` of every fitted cell, locations, problems and positions in the
    config's order. Names the entry and key of anything the config does not define (``ValueError``)."""
    locations, positions, names = config["locations"], config["positions"], problems(config["probe"])
    chosen: dict[tuple[str, str, int], Cell] = {}
    for i, entry in enumerate(config["probe"]["grid"]):
        picked = {}
        for key, defined in (("locations", locations), ("positions", positions), ("problems", names)):
            value = entry[key]
            picked[key] = list(defined) if value == "all" else value
            stray = [v for v in picked[key] if v not in defined]
            if stray:
                raise ValueError(f"probe.grid.{i}.{key}: {stray} are not among the configured {key} {list(defined)}"
                                 + (" (probe.subsets and probe.answer_probe define them)" if key == "problems" else ""))
        for location in picked["locations"]:
            for problem in picked["problems"]:
                for position in picked["positions"]:
                    old = chosen.get((location, problem, position), Cell(False, False))
                    chosen[(location, problem, position)] = Cell(old.control or entry["control"],
                                                                 old.directions or entry["directions"])
    return {location: {problem: {position: chosen[(location, problem, position)] for position in positions
                                 if (location, problem, position) in chosen}
                       for problem in names if any((location, problem, p) in chosen for p in positions)}
            for location in locations}


def fits_per_layer(config: dict, location: str) -> int:
    """Probe fits of one layer at ``location``: per cell, every fold (twice with the control) and the fit on all
    texts where directions are asked."""
    folds = max(config["probe"]["folds"], 1)
    return sum(folds * (2 if cell.control else 1) + cell.directions
               for by_position in cells(config)[location].values() for cell in by_position.values())


def nonlinear_cells(location_cells: dict[str, dict[int, Cell]]) -> dict[str, dict[int, Cell]]:
    """The non-linear probes' cells at a location (``probe.nonlinear``): each problem the grid fits at the last token
    there, with its control where the grid has one, never directions (an MLP has none); empty where it fits no
    problem at the last token."""
    return {problem: {-1: Cell(by_position[-1].control, False)} for problem, by_position in location_cells.items()
            if -1 in by_position}


def nonlinear_locations(config: dict, grid_cells: dict[str, dict[str, dict[int, Cell]]]) -> list[str]:
    """The locations with non-linear probes, in the config's order: none unless ``probe.nonlinear.fit``; those of
    ``probe.nonlinear.locations`` where the grid fits a problem at the last token."""
    settings = config["probe"]["nonlinear"]
    if not settings["fit"]:
        return []
    wanted = config["locations"] if settings["locations"] == "all" else settings["locations"]
    return [location for location in config["locations"]
            if location in wanted and nonlinear_cells(grid_cells[location])]


def positions_of(location_cells: dict[str, dict[int, Cell]]) -> list[int]:
    """The positions any problem of a location is fitted at, in the order they first appear."""
    return list(dict.fromkeys(p for by_position in location_cells.values() for p in by_position))


def describe(grid_cells: dict[str, dict[str, dict[int, Cell]]]) -> str:
    """One line per location and problem: the positions fitted, those with a control and those with directions;
    what the figures and tables print under themselves so that no missing cell goes unsaid."""
    lines = []
    for location, by_problem in grid_cells.items():
        if not by_problem:
            lines.append(f"{location}: no probes")
        for problem, by_position in by_problem.items():
            tokens = ", ".join(str(p) for p in by_position)
            control = [p for p, cell in by_position.items() if cell.control]
            line = f"{location} {problem}: token {tokens}"
            if control:
                line += "; control at " + ("every one" if len(control) == len(by_position) else
                                           ", ".join(map(str, control)))
            lines.append(line)
    return "\n".join(lines)


def conditional_cells(config: dict) -> dict[str, dict[str, list[int]]]:
    """``{location: {problem: [positions]}}`` of the conditional probes (``probe.conditional``), in the config's
    order; empty where ``locations`` is ``[]``. Names the key and the values the config does not define
    (``ValueError``)."""
    settings = config["probe"]["conditional"]
    picked = {}
    for key, defined in (("locations", config["locations"]), ("positions", config["positions"]),
                         ("problems", problems(config["probe"]))):
        value = settings[key]
        picked[key] = list(defined) if value == "all" else value
        stray = [v for v in picked[key] if v not in defined]
        if stray:
            raise ValueError(f"probe.conditional.{key}: {stray} are not among the configured {key} {list(defined)}"
                             + (" (probe.subsets and probe.answer_probe define them; name those to fit, or set "
                                "probe.conditional.locations: [] for none)" if key == "problems" else ""))
    if settings["selection_folds"] > settings["inner_folds"]:
        raise ValueError(f"probe.conditional.selection_folds: {settings['selection_folds']} is more than "
                         f"inner_folds ({settings['inner_folds']})")
    return {location: {problem: [p for p in config["positions"] if p in picked["positions"]]
                       for problem in problems(config["probe"]) if problem in picked["problems"]}
            for location in config["locations"] if location in picked["locations"]}
