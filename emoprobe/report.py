"""The result tables, their plain-text view per model, and the figures."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

KEYS = ["model", "location", "subset", "layer", "position"]
COLUMNS = KEYS + ["accuracy", "ci_low", "ci_high", "macro_f1", "train_accuracy", "control_accuracy", "selectivity",
                  "chance", "n_texts", "n_train", "n_test", "folds", "n_iter", "converged"]


def read_probe_table(path: str) -> pd.DataFrame:
    """A table written by ``scripts/fit_probes.py`` at ``results/probes/{model}/{location}/layersFF-LL.tsv``,
    with ``model`` and ``location`` columns from its path."""
    model, location = re.search(r"probes/(.+)/(\w+)/layers\d+-\d+\.tsv$", str(path)).groups()
    return pd.read_csv(path, sep="\t").assign(model=model, location=location)


def accuracy_table(probe_tables: Sequence[pd.DataFrame], models: Sequence[str], locations: Sequence[str],
                   subsets: Sequence[str]) -> pd.DataFrame:
    """Stack probe tables into one tidy table, ordered as the config lists models, locations, subsets.

    Parameters
    ----------
    probe_tables : tables written by ``scripts/fit_probes.py``, with ``model`` and ``location`` columns added.
    """
    table = pd.concat(probe_tables, ignore_index=True)[COLUMNS]
    order = {"model": models, "location": locations, "subset": subsets}
    table = table.sort_values(KEYS, ascending=[True, True, True, True, False],
                              key=lambda s: s.map({v: i for i, v in enumerate(order[s.name])}) if s.name in order else s)
    return table.reset_index(drop=True)


def peak(rows: pd.DataFrame) -> pd.Series:
    """The row of highest accuracy (the first such in table order)."""
    return rows.loc[rows["accuracy"].idxmax()]


def by_layer_text(table: pd.DataFrame, model: str) -> str:
    """Plain-text view of one model: residual-stream accuracy by layer and position per subset, then the peak of
    every location and subset with its interval and selectivity."""
    lines = []
    rows = table[table["model"] == model]
    for subset, part in rows[rows["location"] == "residual"].groupby("subset", sort=False):
        first = part.iloc[0]
        wide = part.pivot(index="layer", columns="position", values="accuracy").sort_index(axis=1, ascending=False)
        lines += [
            f"{model}, residual stream, subset {subset}: accuracy by layer ({first.n_texts} texts, "
            f"{first.folds} fold(s) of {first.n_test} test texts, majority-class chance {first.chance:.3f})",
            "layer " + " ".join(f"{'token ' + str(p):>10}" for p in wide.columns),
        ]
        lines += [f"{layer:>5} " + " ".join(f"{v:>10.3f}" for v in values) for layer, values in wide.iterrows()]
        lines.append("")
    for (location, subset), part in rows.groupby(["location", "subset"], sort=False):
        best = peak(part)
        lines.append(f"peak {location:<9} {subset:<13}: {best.accuracy:.3f} [{best.ci_low:.3f}, {best.ci_high:.3f}] "
                     f"at layer {best.layer}, token {best.position}; macro-F1 {best.macro_f1:.3f}, "
                     f"selectivity {best.selectivity:.3f}")
    return "\n".join(lines) + "\n"


def answer_summary(answers: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per model: ``model, accuracy, n_texts, n_correct, most_common_answer, its_share``."""
    rows = []
    for model, table in answers.items():
        counts = table["answer"].value_counts()
        rows.append({"model": model, "accuracy": table["correct"].mean(), "n_texts": len(table),
                     "n_correct": int(table["correct"].sum()), "most_common_answer": counts.index[0],
                     "most_common_share": counts.iloc[0] / len(table)})
    return pd.DataFrame(rows)


def save(figure, png: str, pdf: str) -> None:
    """Write ``figure`` as PNG and as a PDF without a timestamp (so reruns give the same bytes)."""
    figure.savefig(png, dpi=150, bbox_inches="tight")
    figure.savefig(pdf, bbox_inches="tight", metadata={"CreationDate": None})


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy_by_layer(table: pd.DataFrame, png: str, pdf: str, position: int = -1) -> None:
    """Accuracy vs layer at ``position``: a panel per (subset, model), a line per location with its 95 %
    interval as a band, majority-class chance dashed."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    table = table[table["position"] == position]
    models, subsets = list(dict.fromkeys(table["model"])), list(dict.fromkeys(table["subset"]))
    figure, axes = plt.subplots(len(subsets), len(models), figsize=(4.2 * len(models), 3.2 * len(subsets)),
                                squeeze=False, sharey=True)
    for i, subset in enumerate(subsets):
        for j, model in enumerate(models):
            ax, part = axes[i, j], table[(table["model"] == model) & (table["subset"] == subset)]
            for location, rows in part.groupby("location", sort=False):
                line, = ax.plot(rows["layer"], rows["accuracy"], marker="o", markersize=3, label=location)
                ax.fill_between(rows["layer"], rows["ci_low"], rows["ci_high"], color=line.get_color(), alpha=0.2)
            ax.axhline(part["chance"].mean(), color="grey", linestyle="--", linewidth=1, label="majority class")
            ax.set_title(f"{model} ({subset} texts)", fontsize=10)
            ax.set_xlabel("layer")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylim(0, 1)
        axes[i, 0].set_ylabel(f"probe accuracy, token {position}")
    axes[0, -1].legend(fontsize=8, loc="upper left")
    figure.tight_layout()
    save(figure, png, pdf)


def plot_accuracy_by_depth(table: pd.DataFrame, n_layers: Mapping[str, int], png: str, pdf: str,
                           location: str = "residual", position: int = -1) -> None:
    """All models in one panel per subset, on normalised depth (layer / number of layers)."""
    plt = _pyplot()

    table = table[(table["location"] == location) & (table["position"] == position)]
    subsets = list(dict.fromkeys(table["subset"]))
    figure, axes = plt.subplots(1, len(subsets), figsize=(4.5 * len(subsets), 3.4), squeeze=False, sharey=True)
    for ax, subset in zip(axes[0], subsets):
        for model, rows in table[table["subset"] == subset].groupby("model", sort=False):
            depth = rows["layer"] / n_layers[model]
            line, = ax.plot(depth, rows["accuracy"], marker="o", markersize=3, label=model)
            ax.fill_between(depth, rows["ci_low"], rows["ci_high"], color=line.get_color(), alpha=0.15)
        ax.set_title(f"{location} stream, token {position}, {subset} texts", fontsize=10)
        ax.set_xlabel("layer / number of layers")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    axes[0, 0].set_ylabel("probe accuracy")
    axes[0, -1].legend(fontsize=8)
    figure.tight_layout()
    save(figure, png, pdf)


def plot_layer_position(table: pd.DataFrame, model: str, png: str, pdf: str, location: str = "residual") -> None:
    """Heatmap of accuracy over layer x token position for one model, a panel per subset."""
    plt = _pyplot()
    import seaborn as sns

    table = table[(table["model"] == model) & (table["location"] == location)]
    subsets = list(dict.fromkeys(table["subset"]))
    n_layers = table["layer"].nunique()
    figure, axes = plt.subplots(1, len(subsets), figsize=(3.6 * len(subsets), 1.2 + 0.22 * n_layers), squeeze=False)
    for ax, subset in zip(axes[0], subsets):
        wide = table[table["subset"] == subset].pivot(index="layer", columns="position", values="accuracy")
        sns.heatmap(wide.sort_index(axis=1, ascending=False), ax=ax, vmin=0, vmax=1, cmap="viridis", annot=True,
                    fmt=".2f", annot_kws={"fontsize": 6}, cbar_kws={"label": "accuracy"})
        ax.set_title(f"{model}, {location}, {subset} texts", fontsize=10)
        ax.set_xlabel("token position")
    figure.tight_layout()
    save(figure, png, pdf)


def plot_appraisal_r2(table: pd.DataFrame, model: str, png: str, pdf: str, position: int = -1) -> None:
    """Heatmap of held-out R² over appraisal x layer at one position."""
    plt = _pyplot()
    import seaborn as sns

    rows = table[table["position"] == position]
    wide = rows.pivot(index="appraisal", columns="layer", values="r2").loc[list(dict.fromkeys(rows["appraisal"]))]
    figure, ax = plt.subplots(figsize=(1.5 + 0.3 * wide.shape[1], 1 + 0.25 * len(wide)))
    sns.heatmap(wide, ax=ax, vmin=0, vmax=max(0.1, float(np.nanmax(wide.to_numpy()))), cmap="magma",
                cbar_kws={"label": "held-out R²"})
    ax.set_title(f"{model}: appraisal ridge probes, residual stream, token {position}", fontsize=10)
    figure.tight_layout()
    save(figure, png, pdf)


def plot_confusion(answers: pd.DataFrame, labels: Sequence[str], model: str, png: str, pdf: str) -> None:
    """Row-normalised confusion matrix of the model's own answers (true label by row)."""
    plt = _pyplot()
    import seaborn as sns

    counts = pd.crosstab(pd.Categorical(answers["label"], labels), pd.Categorical(answers["answer"], labels),
                         dropna=False)
    share = counts.div(counts.sum(axis=1).replace(0, 1), axis=0)
    figure, ax = plt.subplots(figsize=(7, 6))
    sns.heatmap(share, ax=ax, vmin=0, vmax=1, cmap="Blues", annot=counts, fmt="d", annot_kws={"fontsize": 7},
                cbar_kws={"label": "share of the true label's texts"})
    ax.set_xlabel("model's answer")
    ax.set_ylabel("true label")
    ax.set_title(f"{model}: answers, accuracy {answers['correct'].mean():.3f}", fontsize=10)
    figure.tight_layout()
    save(figure, png, pdf)
