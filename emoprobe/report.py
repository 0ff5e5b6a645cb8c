"""The accuracy table, its plain-text view per model, and the figure."""

from __future__ import annotations

import pandas as pd

COLUMNS = ["model", "layer", "position", "accuracy", "n_train", "n_test", "chance",
           "train_accuracy", "n_iter", "converged"]


def accuracy_table(probe_tables: dict[tuple[str, int], pd.DataFrame]) -> pd.DataFrame:
    """Stack per-layer probe tables into one tidy table sorted by model, layer and position.

    Parameters
    ----------
    probe_tables : mapping of (model, 1-based layer) -> table written by :func:`emoprobe.probes.probe_layer`.
    """
    parts = [table.assign(model=model, layer=layer) for (model, layer), table in probe_tables.items()]
    table = pd.concat(parts, ignore_index=True)[COLUMNS]
    order = {model: i for i, model in enumerate(dict.fromkeys(m for m, _ in probe_tables))}
    table = table.sort_values(["model", "layer", "position"], key=lambda s: s.map(order) if s.name == "model" else s,
                              ascending=[True, True, False])
    return table.reset_index(drop=True)


def by_layer_text(table: pd.DataFrame, model: str) -> str:
    """Plain-text table of one model's held-out accuracy by layer, a column per position."""
    rows = table[table["model"] == model]
    wide = rows.pivot(index="layer", columns="position", values="accuracy").sort_index(axis=1, ascending=False)
    first = rows.iloc[0]
    best = rows.loc[rows["accuracy"].idxmax()]
    lines = [
        f"{model}: held-out accuracy by layer (n_train={first.n_train}, n_test={first.n_test}, "
        f"majority-class chance={first.chance:.3f})",
        "layer " + " ".join(f"{'token ' + str(p):>10}" for p in wide.columns),
    ]
    lines += [f"{layer:>5} " + " ".join(f"{v:>10.3f}" for v in values) for layer, values in wide.iterrows()]
    lines.append(f"peak: {best.accuracy:.3f} at layer {best.layer}, token {best.position}")
    return "\n".join(lines) + "\n"


def plot_accuracy_by_layer(table: pd.DataFrame, png: str, pdf: str) -> None:
    """Accuracy vs layer, a line per position, a panel per model, chance dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import seaborn as sns
    from matplotlib.ticker import MaxNLocator

    data = table.assign(token=table["position"].map(lambda p: f"{p}"))
    grid = sns.relplot(data=data, x="layer", y="accuracy", hue="token", col="model", kind="line", marker="o",
                       markersize=4, height=3.6, aspect=1.2, facet_kws={"sharex": False}, palette="viridis")
    for model, ax in grid.axes_dict.items():
        ax.axhline(table.loc[table["model"] == model, "chance"].iloc[0], color="grey", linestyle="--",
                   linewidth=1, label="chance")
        ax.set_title(model)
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(0, 1)
        ax.text(1, table.loc[table["model"] == model, "chance"].iloc[0] + 0.01, "majority-class chance",
                color="grey", fontsize=8)
    grid.set_ylabels("held-out probe accuracy")
    grid.figure.savefig(png, dpi=150, bbox_inches="tight")
    grid.figure.savefig(pdf, bbox_inches="tight", metadata={"CreationDate": None})
