"""Benchmark: what a figure of many heatmaps costs, against the plain method, side by side in one run.

seaborn's ``heatmap`` draws the whole figure after each heatmap (to see whether its tick labels overlap), so a
figure of n panels draws about n²/2 panels before it is saved. Plain is ``seaborn.heatmap`` called as it is; the
workflow's (:func:`emoprobe.figures._heatmap`) hides the figure's other axes meanwhile. Each way draws the appraisal
surgery figure of a run (:func:`emoprobe.figures.plot_surgery`: one heatmap per recipe, 23 on the default config)
from the same table, alternately, ``--repeats`` times (the fastest kept), and the PNG and PDF of both ways are
compared byte for byte. After ``make run``:

    .venv/bin/python benchmarks/figures.py --surgery results/interventions/smollm2-135m/surgery.tsv
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import pandas as pd

from emoprobe import figures


def plain_heatmap(ax, data, **kwargs) -> None:
    import seaborn as sns

    sns.heatmap(data, ax=ax, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--surgery", required=True, help="a run's results/interventions/{model}/surgery.tsv")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    table = pd.read_csv(args.surgery, sep="\t")
    model = Path(args.surgery).parent.name
    ways = {"plain": plain_heatmap, "workflow": figures._heatmap}
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.repeats):
            for way, heatmap in ways.items():
                figures._heatmap = heatmap  # the one name every figure draws its heatmaps through
                started = time.perf_counter()
                figures.plot_surgery(table, model, f"{folder}/{way}.png", f"{folder}/{way}.pdf")
                best[way] = min(best.get(way, float("inf")), time.perf_counter() - started)
        same = all(Path(f"{folder}/plain.{kind}").read_bytes() == Path(f"{folder}/workflow.{kind}").read_bytes()
                   for kind in ("png", "pdf"))
    panels = table.loc[table["beta"] == table["beta"].max(), "recipe"].nunique()
    print(f"{platform.processor() or platform.machine()}, {args.surgery}: {panels} heatmaps, best of {args.repeats}")
    for way, seconds in best.items():
        print(f"{way:<9} {seconds:>7.2f} s")
    print(f"plain / workflow = {best['plain'] / best['workflow']:.2f}x; PNG and PDF byte-identical: {same}")


if __name__ == "__main__":
    main()
