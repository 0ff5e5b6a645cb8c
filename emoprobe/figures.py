"""The figures, each as PNG and as PDF (:func:`save`), drawn from the result tables (:mod:`emoprobe.tables`)."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

from emoprobe.experiments import EXPERIMENTS, per_location
from emoprobe.grid import BASELINES
from emoprobe.tables import FREE_TOP, circular_layers, grid_note, problems_of


def save(figure, png: str, pdf: str) -> None:
    """Write ``figure`` as PNG and as a PDF without a timestamp (so reruns give the same bytes)."""
    figure.savefig(png, dpi=150, bbox_inches="tight")
    figure.savefig(pdf, bbox_inches="tight", metadata={"CreationDate": None})


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _heatmap(ax, data, **kwargs) -> None:
    """``seaborn.heatmap(data, ax=ax, **kwargs)`` with the figure's other axes hidden meanwhile. To see whether its tick
    labels overlap, seaborn draws the whole figure after each heatmap: a cost growing with the square of the number
    of panels (most of a figure of 20 heatmaps' time). Another panel does not move this one's tick labels, so the
    figure is the same."""
    import seaborn as sns

    others = [other for other in ax.figure.axes if other is not ax and other.get_visible()]
    for other in others:
        other.set_visible(False)
    try:
        sns.heatmap(data, ax=ax, **kwargs)
    finally:
        for other in others:
            other.set_visible(True)


LANDMARKS = {"onset": "o", "plateau": "s", "peak": "^"}
LANDMARK_NAMES = {"onset": "onset (half-way to the peak)", "plateau": "plateau start (within the peak's margin)",
                  "peak": "peak"}


def _legend_with_landmarks(ax, **kwargs) -> None:
    """``ax``'s legend, with an entry per landmark marker of :func:`_mark_landmarks` (each with its interval)."""
    from matplotlib.lines import Line2D

    handles, names = ax.get_legend_handles_labels()
    handles += [Line2D([], [], color="dimgrey", marker=marker, linestyle="none", markersize=4)
                for marker in LANDMARKS.values()]
    names += [f"{LANDMARK_NAMES[landmark]}, 95 % bootstrap interval" for landmark in LANDMARKS]
    ax.legend(handles, names, **kwargs)


def _mark_landmarks(ax, places: pd.DataFrame, colours: Mapping[str, str], by: str, unit: str = "layer") -> None:
    """Onset, plateau start and peak of each row of ``places`` (a line of :data:`LANDMARKS` markers with their
    bootstrap intervals, horizontal) in a strip at the bottom of ``ax``, coloured by ``colours[row[by]]``;
    ``unit``: ``layer`` or ``depth``."""
    for i, (_, place) in enumerate(places.iterrows()):
        for landmark, marker in LANDMARKS.items():
            key = f"{landmark}_layer" if unit == "layer" else f"{landmark}_depth"
            stem = landmark if unit == "layer" else key
            centre, low, high = place[key], place[f"{stem}_low"], place[f"{stem}_high"]
            y = 0.03 + 0.05 * i + 0.012 * (list(LANDMARKS).index(landmark) - 1)
            ax.errorbar([centre], [y], xerr=[[centre - low], [high - centre]], fmt=marker,
                        color=colours[place[by]], markersize=4, capsize=2, linewidth=1)


def _footnote(figure, text: str) -> None:
    """``text`` in small type under the figure's axes."""
    figure.text(0.01, 0, text, ha="left", va="top", fontsize=7, family="monospace")


def plot_accuracy_by_layer(table: pd.DataFrame, localisation: pd.DataFrame, png: str, pdf: str, grid_text: str,
                           position: int = -1) -> None:
    """Balanced accuracy vs layer at ``position``: a panel per problem (subset and target, rows) and model
    (columns), a line per location with its 95 % band (the residual stream from layer 0, the embeddings; its
    non-linear probe, where fitted, dashed in its colour), the logit lens dashed black, the text baseline and the
    appraisal-ratings baseline dotted, chance (1 / labels) grey; onset (o), plateau start (s) and peak
    (^) of each location with their intervals at the bottom; on ``model_correct`` panels the layers of
    :func:`circular_layers` shaded."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    models = list(dict.fromkeys(table["model"]))
    problems = problems_of(table)
    at = table[(table["position"] == position) | table["location"].isin(["text", "appraisal_ratings"])]
    figure, axes = plt.subplots(len(problems), len(models), figsize=(4.4 * len(models), 3.3 * len(problems)),
                                squeeze=False, sharey=True)
    for i, (subset, target) in enumerate(problems):
        for j, model in enumerate(models):
            ax = axes[i, j]
            part = at[(at["model"] == model) & (at["subset"] == subset) & (at["target"] == target)]
            colours = {}
            for location, rows in part[~part["location"].isin(BASELINES)].groupby("location", sort=False):
                # a location's non-linear (MLP) probe: dashed, in its linear probe's colour
                linear = location.removesuffix("-nonlinear")
                style = {"linestyle": "--", "color": colours[linear]} if linear in colours else {}
                line, = ax.plot(rows["layer"], rows["balanced_accuracy"], marker="o", markersize=2.5, label=location,
                                **style)
                ax.fill_between(rows["layer"].astype(float), rows["balanced_low"], rows["balanced_high"],
                                color=line.get_color(), alpha=0.2)
                colours.setdefault(location, line.get_color())
            lens = part[part["location"] == "logit_lens"]
            if len(lens):
                ax.plot(lens["layer"], lens["balanced_accuracy"], color="black", linestyle="--", linewidth=1,
                        label="logit lens")
            for baseline, colour, name in (("text", "tab:brown", "text (TF-IDF)"),
                                           ("appraisal_ratings", "tab:purple", "the 21 appraisal ratings")):
                rows = part[part["location"] == baseline]
                if len(rows) and rows["balanced_accuracy"].notna().all():
                    ax.axhline(rows["balanced_accuracy"].iloc[0], color=colour, linestyle=":", linewidth=1.5,
                               label=name)
            chance = part["balanced_chance"].dropna()
            if len(chance):
                ax.axhline(chance.iloc[0], color="grey", linestyle="-", linewidth=0.8, label="chance (1 / labels)")
            if subset == "model_correct" and (shaded := circular_layers(table, model, position)):
                ax.axvspan(shaded[0] - 0.5, shaded[-1] + 0.5, color="grey", alpha=0.15, linewidth=0,
                           label="readout = answer (circular)")
            places = localisation[(localisation["model"] == model) & (localisation["subset"] == subset)
                                  & (localisation["target"] == target) & (localisation["position"] == position)
                                  & localisation["location"].isin(colours)]
            _mark_landmarks(ax, places, colours, by="location")
            if part["balanced_accuracy"].isna().all():
                note = textwrap.fill(part["note"].iloc[0].rsplit("; ", 1)[-1], 45)
                ax.text(0.5, 0.5, f"not scored:\n{note}", ha="center", va="center", transform=ax.transAxes,
                        fontsize=7)
                ax.set_xlim(part["layer"].min() - 0.5, part["layer"].max() + 0.5)
            ax.set_title(f"{model}: {subset} texts, target {target}", fontsize=10)
            ax.set_xlabel("layer (0 = token embeddings)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylim(0, 1)
        axes[i, 0].set_ylabel(f"balanced accuracy, token {position}")
    _legend_with_landmarks(axes[0, -1], fontsize=7, loc="upper left")
    figure.tight_layout()
    _footnote(figure, grid_note(grid_text))
    save(figure, png, pdf)


def plot_accuracy_by_depth(table: pd.DataFrame, localisation: pd.DataFrame, n_layers: Mapping[str, int], png: str,
                           pdf: str, location: str = "residual", position: int = -1) -> None:
    """All models in one panel per problem, on normalised depth (layer / number of layers), with each model's
    onset, plateau start and peak (intervals in depth) at the bottom."""
    plt = _pyplot()

    table = table[(table["location"] == location) & (table["position"] == position) & (table["layer"] >= 1)]
    problems = problems_of(table)
    figure, axes = plt.subplots(1, len(problems), figsize=(4.5 * len(problems), 3.5), squeeze=False, sharey=True)
    for ax, (subset, target) in zip(axes[0], problems):
        colours = {}
        part = table[(table["subset"] == subset) & (table["target"] == target)]
        for model, rows in part.groupby("model", sort=False):
            depth = rows["layer"].astype(float) / n_layers[model]
            line, = ax.plot(depth, rows["balanced_accuracy"], marker="o", markersize=2.5, label=model)
            ax.fill_between(depth, rows["balanced_low"], rows["balanced_high"], color=line.get_color(), alpha=0.15)
            colours[model] = line.get_color()
        places = localisation[(localisation["location"] == location) & (localisation["subset"] == subset)
                              & (localisation["target"] == target) & (localisation["position"] == position)
                              & localisation["model"].isin(colours)]
        _mark_landmarks(ax, places, colours, by="model", unit="depth")
        ax.set_title(f"{location} stream, token {position}: {subset} texts, target {target}", fontsize=9)
        ax.set_xlabel("layer / number of layers")
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1)
    axes[0, 0].set_ylabel("balanced accuracy")
    _legend_with_landmarks(axes[0, -1], fontsize=7, loc="upper left")
    figure.tight_layout()
    save(figure, png, pdf)


def plot_layer_position(table: pd.DataFrame, model: str, png: str, pdf: str, positions: Sequence[int], grid_text: str,
                        location: str = "residual") -> None:
    """Heatmap of balanced accuracy over layer x token position for one model, a panel per problem the grid fits
    at more than one position (or at one, when none is), every extracted position a column: the cells the grid
    does not fit grey and marked "not fitted"."""
    plt = _pyplot()
    table = table[(table["model"] == model) & (table["location"] == location)]
    problems = problems_of(table)
    spread = [p for p in problems if table[(table["subset"] == p[0]) & (table["target"] == p[1])]["position"].nunique() > 1]
    problems = spread or problems
    columns = sorted(positions, reverse=True)
    n_layers = table["layer"].nunique()
    figure, axes = plt.subplots(1, len(problems), figsize=(max(3.6 * len(problems), 6), 1.2 + 0.22 * n_layers),
                                squeeze=False)
    for ax, (subset, target) in zip(axes[0], problems):
        part = table[(table["subset"] == subset) & (table["target"] == target)]
        wide = part.pivot(index="layer", columns="position", values="balanced_accuracy").reindex(columns=columns)
        fitted = part.pivot(index="layer", columns="position", values="n_texts").reindex(columns=columns).notna()
        ax.set_facecolor("lightgrey")
        _heatmap(ax, wide, vmin=0, vmax=1, cmap="viridis", annot=True, fmt=".2f", annot_kws={"fontsize": 6},
                 mask=~fitted, cbar_kws={"label": "balanced accuracy"})
        for x, position in enumerate(columns):
            if not fitted[position].any():
                ax.text(x + 0.5, len(wide) / 2, "not fitted", rotation=90, ha="center", va="center", fontsize=7)
        ax.set_title(f"{model}, {location}: {subset} texts, target {target}", fontsize=9)
        ax.set_xlabel("token position")
    figure.tight_layout()
    _footnote(figure, grid_note(grid_text))
    save(figure, png, pdf)


def plot_appraisal_r2(table: pd.DataFrame, model: str, png: str, pdf: str, position: int = -1) -> None:
    """Heatmap of held-out R² over appraisal x layer at one position."""
    plt = _pyplot()
    rows = table[table["position"] == position]
    wide = rows.pivot(index="appraisal", columns="layer", values="r2").loc[list(dict.fromkeys(rows["appraisal"]))]
    figure, ax = plt.subplots(figsize=(1.5 + 0.3 * wide.shape[1], 1 + 0.25 * len(wide)))
    _heatmap(ax, wide, vmin=0, vmax=max(0.1, float(np.nanmax(wide.to_numpy()))), cmap="magma",
             cbar_kws={"label": "held-out R²"})
    ax.set_title(f"{model}: appraisal ridge probes, residual stream, token {position}", fontsize=10)
    figure.tight_layout()
    save(figure, png, pdf)


def plot_confusion(answers: pd.DataFrame, labels: Sequence[str], model: str, png: str, pdf: str) -> None:
    """Row-normalised confusion matrix of the model's own answers (true label by row), and beside it what the model
    would say unrestricted: its :data:`FREE_TOP` most common free next tokens, those that are a label's answer token
    marked."""
    plt = _pyplot()
    counts = pd.crosstab(pd.Categorical(answers["label"], labels), pd.Categorical(answers["answer"], labels),
                         dropna=False)
    share = counts.div(counts.sum(axis=1).replace(0, 1), axis=0)
    figure, (ax, free_ax) = plt.subplots(1, 2, figsize=(11, 6), gridspec_kw={"width_ratios": [7, 3]})
    _heatmap(ax, share, vmin=0, vmax=1, cmap="Blues", annot=counts, fmt="d", annot_kws={"fontsize": 7},
             cbar_kws={"label": "share of the true label's texts"})
    ax.set_xlabel("model's answer (the argmax over the 13 labels' tokens)")
    ax.set_ylabel("true label")
    ax.set_title(f"{model}: answers, accuracy {answers['correct'].mean():.3f}", fontsize=10)
    top = answers.groupby("free_answer")["free_is_label"].agg(["size", "first"]).sort_values("size", ascending=False)
    top = top.head(FREE_TOP)[::-1]
    free_ax.barh(range(len(top)), top["size"] / len(answers),
                 color=["tab:blue" if is_label else "tab:grey" for is_label in top["first"]])
    free_ax.set_yticks(range(len(top)), top.index, fontsize=8, family="monospace")
    free_ax.set_xlabel("share of texts")
    free_ax.set_title(f"unrestricted next token\n(blue: a label's; {answers['free_is_label'].mean():.2f} of texts)",
                      fontsize=9)
    figure.tight_layout()
    save(figure, png, pdf)


class Panel(NamedTuple):
    """One panel of the intervention figures: location x layer tables of a score and its 95 % interval's ends."""

    title: str
    value: pd.DataFrame
    low: pd.DataFrame
    high: pd.DataFrame
    share: bool  # a share of answers (drawn on 0-1); else the probes' balanced accuracy (drawn on its own scale)


def intervention_panels(accuracy: pd.DataFrame, interventions: pd.DataFrame, model: str, locations: Sequence[str],
                        subset: str = "all", position: int = -1) -> list[Panel]:
    """The combined heatmap's panels for one model: the probes' balanced accuracy (``subset``'s texts, true label,
    token ``position``), then each experiment in ``interventions`` that edits each location in turn, in the
    registry's order, its entry's column (:attr:`emoprobe.experiments.Experiment.heatmap`; ablation shown as ``1 -
    unchanged``, its interval's ends swapped, so that in every panel a bright cell is a location that matters), over
    the centre layers; each with its 95 % interval."""
    probes = accuracy[(accuracy["model"] == model) & accuracy["location"].isin(locations)
                      & (accuracy["subset"] == subset) & (accuracy["target"] == "label")
                      & (accuracy["position"] == position) & (accuracy["layer"] >= 1)]
    tables = [probes.pivot(index="location", columns="layer", values=column)
              for column in ("balanced_accuracy", "balanced_low", "balanced_high")]
    panels = [Panel(f"probe balanced accuracy ({subset} texts, token {position})", *tables, share=False)]
    rows = interventions[interventions["model"] == model]
    for experiment in per_location():
        column, title = EXPERIMENTS[experiment].heatmap
        # not a row of a note saying why there are no conditions
        part = rows[rows["experiment"] == experiment].dropna(subset=["layer"]).astype({"layer": int})
        if part.empty:
            continue
        if column == "unchanged":
            values = {"value": 1 - part[column], "low": 1 - part[f"{column}_high"], "high": 1 - part[f"{column}_low"]}
        else:
            values = {"value": part[column], "low": part[f"{column}_low"], "high": part[f"{column}_high"]}
        spans = part.groupby("location")["span"].max()
        window = spans[[l for l in spans.index if l != "residual"]].max() if len(spans) > ("residual" in spans) else None
        described = "; ".join(piece for piece in (
            "residual stream: that layer alone" if "residual" in spans else "",
            f"attention, MLP: {window} layers centred on it" if window is not None else "") if piece)
        tables = [part.assign(value=values[key]).pivot(index="location", columns="layer", values="value")
                  for key in ("value", "low", "high")]
        panels.append(Panel(f"{title} ({described})", *tables, share=True))
    return [Panel(panel.title, *(table.reindex([l for l in locations if l in table.index])
                                 for table in (panel.value, panel.low, panel.high)), panel.share) for panel in panels]


def plot_intervention_heatmap(accuracy: pd.DataFrame, interventions: pd.DataFrame, model: str,
                              locations: Sequence[str], subset: str, png: str, pdf: str) -> None:
    """The paper's combined heatmap for one model: location x layer panels, one above the other on the same
    layer axis, of probing accuracy (on its own colour scale, from its lowest to its highest cell, so that its peak
    shows) and of how much each intervention changes the answer (shares, on 0-1)."""
    plt = _pyplot()
    panels = intervention_panels(accuracy, interventions, model, locations, subset)
    n_layers = max(panel.value.columns.max() for panel in panels)
    figure, axes = plt.subplots(len(panels), 1, figsize=(2 + 0.3 * n_layers, 0.9 + 1.1 * len(panels) * len(locations) / 3),
                                squeeze=False)
    for ax, panel in zip(axes[:, 0], panels):
        table = panel.value.reindex(columns=range(1, int(n_layers) + 1))
        ax.set_facecolor("lightgrey")  # a layer without a window (it would leave the model)
        scale = {"vmin": 0, "vmax": 1} if panel.share else {"vmin": np.nanmin(table.values),
                                                            "vmax": np.nanmax(table.values)}
        _heatmap(ax, table, cmap="viridis" if panel.share else "magma", **scale,
                 cbar_kws={"label": "share" if panel.share else "balanced accuracy", "pad": 0.01})
        ax.set_title(f"{model}: {panel.title}", fontsize=9)
        ax.set_xlabel("layer (grey: no window there)")
        ax.set_ylabel("")
    figure.tight_layout()
    save(figure, png, pdf)


def plot_note(note: str, title: str, png: str, pdf: str) -> None:
    """A figure that says why there is nothing to draw (the row of a table that could not be computed)."""
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(6, 1.5))
    ax.axis("off")
    ax.text(0.5, 0.5, textwrap.fill(note, 80), ha="center", va="center", fontsize=9)
    ax.set_title(title, fontsize=10)
    save(figure, png, pdf)


def plot_promotion(promotion: pd.DataFrame, model: str, png: str, pdf: str) -> None:
    """Emotion promotion for one model: a heatmap of emotion x centre layer per beta, of the mean normalised
    change of the emotion's probability (the paper's metric, -1 .. 1); the table's note when it has no rows
    of conditions."""
    if "change" not in promotion:
        plot_note(promotion["note"].iloc[0], f"{model}: emotion promotion", png, pdf)
        return
    plt = _pyplot()
    betas = sorted(promotion["beta"].unique())
    emotions = list(dict.fromkeys(promotion["emotion"]))
    figure, axes = plt.subplots(1, len(betas), figsize=(1.5 + (0.3 * promotion["layer"].nunique() + 1.5) * len(betas),
                                                        1.2 + 0.25 * len(emotions)), squeeze=False)
    for ax, beta in zip(axes[0], betas):
        part = promotion[promotion["beta"] == beta]
        wide = part.pivot(index="emotion", columns="layer", values="change").loc[emotions]
        _heatmap(ax, wide, vmin=-1, vmax=1, center=0, cmap="RdBu_r", cbar_kws={"label": "normalised change"})
        ax.set_title(f"{model}: promotion, beta {beta:g} x mean norm at each of {int(part['span'].max())} layers "
                     f"(top layer moved by {part['displacement'].median():.2g} x its mean norm, median)", fontsize=9)
        ax.set_xlabel("layer (centre of the window)")
    figure.tight_layout()
    save(figure, png, pdf)


def plot_surgery(surgery: pd.DataFrame, model: str, png: str, pdf: str) -> None:
    """Appraisal surgery for one model at its largest beta: per recipe, a heatmap of label x centre layer of
    the change in how many texts answer each label (after - before)."""
    plt = _pyplot()
    beta = surgery["beta"].max()
    rows = surgery[surgery["beta"] == beta]
    recipes = list(dict.fromkeys(rows["recipe"]))
    labels = list(dict.fromkeys(rows["label"]))
    columns = min(len(recipes), 4)
    lines = -(-len(recipes) // columns)
    n_texts = int(rows.groupby(["recipe", "layer"])["count"].sum().iloc[0])
    width = 1.5 + 0.3 * rows["layer"].nunique()
    figure, axes = plt.subplots(lines, columns, figsize=(width * columns, (1 + 0.25 * len(labels)) * lines),
                                squeeze=False)
    for ax, recipe in zip(axes.flat, recipes):
        wide = rows[rows["recipe"] == recipe].pivot(index="label", columns="layer", values="shift").loc[labels]
        _heatmap(ax, wide, vmin=-n_texts, vmax=n_texts, center=0, cmap="PuOr_r", cbar_kws={"label": "texts"})
        ax.set_title(f"{recipe}", fontsize=9)
        ax.set_xlabel("layer (centre)")
    for ax in list(axes.flat)[len(recipes):]:
        ax.axis("off")
    figure.suptitle(f"{model}: appraisal surgery, beta {beta:g} x mean norm: answers after - before "
                    f"({n_texts} texts)", fontsize=10)
    figure.tight_layout()
    save(figure, png, pdf)


def plot_interventions_by_depth(accuracy: pd.DataFrame, interventions: pd.DataFrame, n_layers: Mapping[str, int],
                                locations: Sequence[str], subset: str, png: str, pdf: str, position: int = -1) -> None:
    """All models on normalised depth: a row per panel of :func:`intervention_panels` (probing, then each
    intervention), a column per location, a line per model with its 95 % band (a zig-zag inside the band is noise);
    the shares on 0-1, the probes' balanced accuracy on its own scale."""
    plt = _pyplot()

    models = list(n_layers)
    per_model = {model: intervention_panels(accuracy, interventions, model, locations, subset, position)
                 for model in models}
    first = per_model[models[0]]
    figure, axes = plt.subplots(len(first), len(locations), figsize=(3.6 * len(locations), 2.3 * len(first)),
                                squeeze=False, sharex=True, sharey="row")
    for row, reference in enumerate(first):
        title = reference.title.split(" (")[0]
        for column, location in enumerate(locations):
            ax = axes[row, column]
            for model in models:
                panel = per_model[model][row]
                if location in panel.value.index:
                    values = panel.value.loc[location].dropna()
                    depth = values.index.astype(float) / n_layers[model]
                    [line] = ax.plot(depth, values.to_numpy(), marker="o", markersize=2.5, label=model)
                    ax.fill_between(depth, panel.low.loc[location, values.index].to_numpy(dtype=float),
                                    panel.high.loc[location, values.index].to_numpy(dtype=float),
                                    color=line.get_color(), alpha=0.2, linewidth=0)
            ax.set_title(f"{location}: {title}", fontsize=8)
            ax.set_xlim(0, 1.02)
            if reference.share:
                ax.set_ylim(0, 1.02)
        axes[row, 0].set_ylabel("share" if reference.share else "balanced accuracy")
    for ax in axes[-1]:
        ax.set_xlabel("layer / number of layers")
    axes[0, -1].legend(fontsize=7)
    figure.text(0.5, 0.0, "bands: 95 % intervals (Wilson; patching: allowing for pairs that share a source; "
                "probes: Price-Bonett)", ha="center", va="bottom", fontsize=7)
    figure.tight_layout(rect=(0, 0.02, 1, 1))
    save(figure, png, pdf)


CONDITIONAL_NAMES = {"frequencies": ("alone (beyond the label frequencies)", None),
                     "text": ("beyond the text's words (TF-IDF probe)", "the TF-IDF probe alone"),
                     "words": ("beyond the words' mean input embedding", "the words' embedding alone")}


def plot_conditional(table: pd.DataFrame, localisation: pd.DataFrame, model: str, png: str, pdf: str) -> None:
    """What each layer of ``model`` adds in bits (results/conditional.tsv): a panel per location, problem and token
    position, a line per baseline with its 95 % band and its peak (results/conditional_localisation.tsv), and
    each baseline's own usable information as a dashed line of its colour: a layer can add to the words only what
    they leave open, so the two read together."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    rows = table[table["model"] == model]
    panels = list(rows.groupby(["location", "subset", "target", "position"], sort=False))
    if not panels:
        plot_note("no conditional probe could be scored: each of its problems has fewer than two labels with as many "
                  "texts as folds (results/subsets.tsv)", f"{model}: usable information by layer", png, pdf)
        return
    figure, axes = plt.subplots(1, len(panels), figsize=(5.8 * len(panels), 3.8), squeeze=False)
    for ax, ((location, subset, target, position), panel) in zip(axes[0], panels):
        for baseline, lines in panel.groupby("baseline", sort=False):
            lines = lines.sort_values("layer")
            beyond, alone = CONDITIONAL_NAMES.get(baseline, (f"beyond {baseline}", f"{baseline} alone"))
            [line] = ax.plot(lines["layer"], lines["information"], marker="o", markersize=2.5, label=beyond)
            ax.fill_between(lines["layer"], lines["information_low"], lines["information_high"],
                            color=line.get_color(), alpha=0.2, linewidth=0)
            if alone is not None:
                ax.axhline(lines["baseline_information"].iloc[0], color=line.get_color(), linestyle="--",
                           linewidth=0.8, label=f"{alone}: {lines['baseline_information'].iloc[0]:.2f}")
            peak = localisation[(localisation["location"] == location) & (localisation["subset"] == subset)
                                & (localisation["target"] == target) & (localisation["position"] == position)
                                & (localisation["baseline"] == baseline)]
            if len(peak):
                ax.plot(peak["peak_layer"], peak["peak_information"], marker=LANDMARKS["peak"], color=line.get_color(),
                        markersize=7, markeredgecolor="black", linestyle="none")
        ax.axhline(0, color="grey", linewidth=0.6)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{model} {location}, {subset} / {target}, token {position} (label entropy "
                     f"{panel['label_entropy'].iloc[0]:.2f} bits)", fontsize=9)
        ax.set_xlabel("layer")
        ax.set_ylabel("usable information (bits)")
        ax.legend(fontsize=7)
    figure.text(0.5, 0.0, "bands: 95 % studentised bootstrap over texts; triangles: peak layers; dashed: each baseline "
                "alone (recalibrated)", ha="center", va="bottom", fontsize=7)
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    save(figure, png, pdf)


def plot_attention(attention: pd.DataFrame, patching: pd.DataFrame | None, model: str, png: str, pdf: str) -> None:
    """Where the last token reads the event: the mean share of its attention on the event text, layer x head, and
    beside it, on the same layers, the share of answers that patching the attention output transfers (its windows'
    centres), so that the layers where attention moves the answer can be held against the heads that read the text."""
    plt = _pyplot()
    text = attention[attention["segment"] == "text"].pivot(index="layer", columns="head", values="share")
    n_layers = len(text)
    figure, axes = plt.subplots(1, 2, figsize=(4 + 0.35 * text.shape[1], 1.5 + 0.25 * n_layers),
                                gridspec_kw={"width_ratios": [max(text.shape[1], 4), 3]}, sharey=False)
    _heatmap(axes[0], text, vmin=0, vmax=1, cmap="magma", cbar_kws={"label": "share on the event text"})
    axes[0].set_title(f"{model}: the last token's attention on the event text\n(mean over "
                      f"{int(attention['n_texts'].iloc[0])} texts)", fontsize=9)
    axes[0].set_xlabel("head")
    ax = axes[1]
    if patching is not None and "location" in patching:
        rows = patching[patching["location"] == "attention"].set_index("layer").reindex(text.index)
        share = rows["transfer"].fillna(0).to_numpy()
        error = np.stack([share - rows["transfer_low"].fillna(0), rows["transfer_high"].fillna(0) - share])
        ax.barh(np.arange(n_layers) + 0.5, share, height=0.8, color="tab:orange", xerr=error,
                error_kw={"elinewidth": 0.8, "capsize": 1.5, "ecolor": "0.3"})
        ax.set_xlim(0, 1)
        ax.set_xlabel("share of answers transferred (95 %)")
        ax.set_title("patching the attention output\n(windows centred on the layer)", fontsize=9)
    else:
        ax.text(0.5, 0.5, "no patching in this run", ha="center", va="center", transform=ax.transAxes, fontsize=8)
    ax.set_ylim(n_layers, 0)
    ax.set_yticks(np.arange(n_layers) + 0.5, text.index)
    ax.set_ylabel("layer")
    figure.tight_layout()
    save(figure, png, pdf)
