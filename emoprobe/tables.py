"""The result tables: reading score tables, stacking them into one, their plain-text view per model, and the summary
of the models' answers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from emoprobe.grid import BASELINES
from emoprobe.scores import INTEGER_COLUMNS, SCORE_COLUMNS

KEYS = ["model", "location", "subset", "target", "layer", "position"]
COLUMNS = KEYS + SCORE_COLUMNS
TARGETS = ["label", "answer"]
# The model's own readout (logit lens) giving its final answer on at least this share of texts marks the layers at
# which a linear probe on model_correct can score by recovering the LM head (label = answer there).
CIRCULAR_AGREEMENT = 0.9


def read_score_table(path: str) -> pd.DataFrame:
    """A table of probe or baseline scores (``scripts/fit_probes.py``, ``fit_text_baseline.py``,
    ``logit_lens.py``), with its integer columns as nullable integers (a text baseline has no layer)."""
    integers = {column: "Int64" for column in ["layer", "position", *INTEGER_COLUMNS]}
    return pd.read_csv(path, sep="\t", dtype={**integers, "note": str}).fillna({"note": ""})


def accuracy_table(tables: Sequence[pd.DataFrame], models: Sequence[str], locations: Sequence[str],
                   subsets: Sequence[str]) -> pd.DataFrame:
    """Stack score tables into one tidy table of :data:`COLUMNS`, ordered as the config lists models, locations
    (then the baselines), subsets; targets, layers, positions (last token first)."""
    table = pd.concat(tables, ignore_index=True)[COLUMNS]
    order = {"model": models, "location": [*locations, *BASELINES], "subset": subsets, "target": TARGETS}
    table = table.sort_values(KEYS, ascending=[True, True, True, True, True, False], na_position="first",
                              key=lambda s: s.map({v: i for i, v in enumerate(order[s.name])}) if s.name in order else s)
    return table.reset_index(drop=True)


def circular_layers(table: pd.DataFrame, model: str, position: int = -1) -> list[int]:
    """Layers at which ``model``'s logit lens gives its final answer on at least :data:`CIRCULAR_AGREEMENT` of all
    texts: there a linear probe of the ``model_correct`` texts can recover the LM head (label = answer)."""
    lens = table[(table["model"] == model) & (table["location"] == "logit_lens") & (table["subset"] == "all")
                 & (table["target"] == "answer") & (table["position"] == position)]
    return sorted(int(layer) for layer in lens.loc[lens["accuracy"] >= CIRCULAR_AGREEMENT, "layer"])


def problems_of(table: pd.DataFrame) -> list[tuple[str, str]]:
    """The (subset, target) pairs of ``table``, in table order."""
    return list(dict.fromkeys(zip(table["subset"], table["target"])))


def grid_note(grid_text: str) -> str:
    """The probe grid (:func:`emoprobe.grid.describe`) as printed under a figure or atop a table."""
    return "probes fitted (probe.grid; any other location, problem and token is not fitted):\n" + grid_text


def by_layer_text(table: pd.DataFrame, localisation: pd.DataFrame, model: str, grid_text: str) -> str:
    """Plain-text view of one model: the probe grid, residual-stream balanced accuracy by layer and position per
    problem, then where each location's probe forms (:mod:`emoprobe.scores`) and the baselines."""
    lines = [grid_note(grid_text), ""]
    rows = table[(table["model"] == model)]
    probes = rows[~rows["location"].isin(BASELINES)]
    for (subset, target), part in probes[probes["location"] == "residual"].groupby(["subset", "target"], sort=False):
        first = part.iloc[0]
        wide = part.pivot(index="layer", columns="position", values="balanced_accuracy").sort_index(axis=1,
                                                                                                      ascending=False)
        lines += [
            f"{model}, residual stream (layer 0: token embeddings), {subset} texts, target {target}: balanced accuracy "
            f"by layer ({first.n_texts} texts, {first.n_labels} labels, chance {first.balanced_chance:.3f}; "
            f"{first.folds} fold(s))" + (f"; {first.note}" if first.note else ""),
            "layer " + " ".join(f"{'token ' + str(p):>10}" for p in wide.columns),
        ]
        lines += [f"{layer:>5} " + " ".join(f"{v:>10.3f}" for v in values) for layer, values in wide.iterrows()]
        lines.append("")
    places = localisation[(localisation["model"] == model) & (localisation["position"] == -1)]
    for _, place in places.iterrows():
        lines.append(
            f"{place.location:<10} {place.subset:<13} {place.target:<6}: peak layer {place.peak_layer} "
            f"[{place.peak_low}, {place.peak_high}] ({place.peak_score:.3f} [{place.peak_score_low:.3f}, "
            f"{place.peak_score_high:.3f}]), onset {place.onset_layer} [{place.onset_low}, {place.onset_high}], "
            f"plateau from {place.plateau_layer} [{place.plateau_low}, {place.plateau_high}]; peak - layer 1 "
            f"{place.peak_minus_first:+.3f} [{place.peak_minus_first_low:+.3f}, {place.peak_minus_first_high:+.3f}]"
            + ("" if pd.isna(place.peak_minus_text) else
               f", peak - text probe {place.peak_minus_text:+.3f} [{place.peak_minus_text_low:+.3f}, "
               f"{place.peak_minus_text_high:+.3f}]"))
    for name, baseline in (("text baseline", "text"), ("appraisal ratings", "appraisal_ratings")):
        for _, row in rows[rows["location"] == baseline].iterrows():
            lines.append(f"{name} {row.subset} / {row.target}: balanced accuracy {row.balanced_accuracy:.3f} "
                         f"[{row.balanced_low:.3f}, {row.balanced_high:.3f}]")
    unscored = rows[rows["balanced_accuracy"].isna()].drop_duplicates(["location", "subset", "target"])
    for _, row in unscored.iterrows():
        lines.append(f"not scored: {row.location} {row.subset} / {row.target}: {row.note}")
    return "\n".join(lines) + "\n"


FREE_TOP = 10


def answer_summary(answers: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per model: ``model, accuracy, n_texts, n_correct, most_common_answer, most_common_share``, and of
    the unrestricted next token, ``free_is_label_share`` (the texts whose free answer is a label's answer token) and
    ``free_top`` (the :data:`FREE_TOP` most common free answers with their counts, ``"token" count; ...``)."""
    rows = []
    for model, table in answers.items():
        counts = table["answer"].value_counts()
        free = table["free_answer"].value_counts().head(FREE_TOP)
        rows.append({"model": model, "accuracy": table["correct"].mean(), "n_texts": len(table),
                     "n_correct": int(table["correct"].sum()), "most_common_answer": counts.index[0],
                     "most_common_share": counts.iloc[0] / len(table),
                     "free_is_label_share": table["free_is_label"].astype(bool).mean(),
                     "free_top": "; ".join(f"{word} {count}" for word, count in free.items())})
    return pd.DataFrame(rows)
