"""Figures: what drawing them faster must not change."""

import numpy as np
import pandas as pd

from emoprobe import figures


def plain_heatmap(ax, data, **kwargs) -> None:
    import seaborn as sns

    sns.heatmap(data, ax=ax, **kwargs)


def three_heatmaps(heatmap, png) -> list[float]:
    """Three heatmaps side by side, their column labels too long for their cells (seaborn turns them), drawn through
    ``heatmap`` and saved to ``png``; returns the column labels' rotations."""
    plt = figures._pyplot()
    rng = np.random.default_rng(0)
    figure, axes = plt.subplots(1, 3, figsize=(6, 2))
    for ax in axes:
        data = pd.DataFrame(rng.random((4, 8)), index=[f"label {i}" for i in range(4)],
                            columns=[f"a long column name {j}" for j in range(8)])
        heatmap(ax, data, vmin=0, vmax=1, cbar_kws={"label": "share"})
    figure.tight_layout()
    figure.savefig(png, dpi=72)
    rotations = [label.get_rotation() for ax in axes for label in ax.get_xticklabels()]
    plt.close(figure)
    return rotations


def test_heatmaps_drawn_with_the_other_panels_hidden_are_seaborns_to_the_byte(tmp_path):
    rotations = three_heatmaps(plain_heatmap, tmp_path / "plain.png")
    assert three_heatmaps(figures._heatmap, tmp_path / "ours.png") == rotations
    assert set(rotations) == {90.0}  # seaborn's overlap check decided something here
    assert (tmp_path / "ours.png").read_bytes() == (tmp_path / "plain.png").read_bytes()


def test_the_surgery_figure_is_the_same_as_with_seaborn_called_plainly(tmp_path, monkeypatch):
    recipes, labels, layers = [f"recipe {r}" for r in range(6)], ["anger", "joy", "fear"], [4, 9, 14]
    rows = [{"beta": 1.0, "recipe": recipe, "label": label, "layer": layer, "shift": (i + j + k) % 5 - 2, "count": 4}
            for i, recipe in enumerate(recipes) for j, label in enumerate(labels) for k, layer in enumerate(layers)]
    table = pd.DataFrame(rows)
    figures.plot_surgery(table, "m", str(tmp_path / "ours.png"), str(tmp_path / "ours.pdf"))
    monkeypatch.setattr(figures, "_heatmap", plain_heatmap)
    figures.plot_surgery(table, "m", str(tmp_path / "plain.png"), str(tmp_path / "plain.pdf"))
    for kind in ("png", "pdf"):
        assert (tmp_path / f"ours.{kind}").read_bytes() == (tmp_path / f"plain.{kind}").read_bytes(), kind
