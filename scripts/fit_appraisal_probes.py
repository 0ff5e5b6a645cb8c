"""Ridge probes from every layer's residual stream to every appraisal rating, for one model: their held-out R²
and the weights of their fit on all texts."""

import numpy as np
import pandas as pd

from emoprobe import provenance
from emoprobe.appraisal import appraisal_directions, appraisal_r2, appraisal_table
from emoprobe.corpus import read_prompts
from emoprobe.errors import log_to, reported_as_message
from emoprobe.h5io import read_stored_layer, write_directions
from emoprobe.io import write_tsv
from emoprobe.problems import fold_indices

log = log_to(snakemake.log[0])
settings, split, columns = snakemake.params.appraisal, snakemake.params.split, snakemake.params.columns
prompts = read_prompts(snakemake.input.prompts).set_index("row_id")
tables = []
directions = {"classes": list(range(len(columns))), "weights": [], "intercepts": []}
for layer in snakemake.params.layers:
    with reported_as_message():
        states, meta = read_stored_layer(snakemake.input.states, layer, "residual", positions=settings["positions"],
                                         provenance=snakemake.params.provenance)
    ratings = prompts.loc[meta["row_id"], columns].to_numpy(dtype=float)
    splits = fold_indices(meta["label_id"], **split._asdict())
    table = appraisal_table(appraisal_r2(states, ratings, splits, settings["alpha"]), layer, meta["positions"], columns)
    weights, intercepts = appraisal_directions(states, ratings, settings["alpha"])
    directions["weights"].append(weights)
    directions["intercepts"].append(intercepts)
    log.info("layer %d: best R² %.3f (%s)", layer, table["r2"].max(), table.loc[table["r2"].idxmax(), "appraisal"])
    tables.append(table)
write_tsv(pd.concat(tables, ignore_index=True), snakemake.output.table)
write_directions(snakemake.output.directions,
                 {"appraisal": {**directions, "positions": meta["positions"],
                                **{key: np.stack(directions[key]) for key in ("weights", "intercepts")}}},
                 layers=snakemake.params.layers,
                 attrs=provenance.appraisal_directions(snakemake.wildcards.model, columns))
