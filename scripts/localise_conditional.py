"""Where along the layers one model's usable information beyond each baseline forms, from its conditional probes'
per-text log2-probabilities (results/conditional/{model}/{location}.h5)."""

import numpy as np
import pandas as pd

from emoprobe import conditional
from emoprobe.errors import log_to, reported_as_message
from emoprobe.h5io import read_problems
from emoprobe.io import write_tsv

log = log_to(snakemake.log[0])
model, settings = snakemake.wildcards.model, snakemake.params.probe
rows = []
for job in snakemake.params.jobs:
    with reported_as_message():
        layers, problems = read_problems(snakemake.input.probabilities[job["index"]], provenance=job["provenance"])
    candidates = layers >= 1  # layer 0, the embeddings, is a baseline, not a candidate
    for name, problem in problems.items():
        subset, target = name.split("/")
        for p, position in enumerate(problem["positions"].tolist()):
            # the file's axis of baselines is in the order its provenance names them (checked above)
            for b, baseline in enumerate(job["provenance"]["baselines"]):
                gains = problem["log2_probability"][candidates, p, b] - problem["baseline_log2"][b]
                tested = ~np.isnan(gains).any(axis=0)
                row = conditional.information_localisation(
                    gains[:, tested], layers[candidates], n_layers=snakemake.params.n_layers,
                    replicates=settings["bootstrap"], seed=settings["seed"])
                rows.append({"model": model, "location": job["location"], "subset": subset, "target": target,
                             "position": position, "baseline": baseline, **row})
                log.info("%s %s / %s, token %d, beyond %s: peak layer %d [%d, %d], %.3f bits [%.3f, %.3f]",
                         job["location"], subset, target, position, baseline, row["peak_layer"], row["peak_low"],
                         row["peak_high"], row["peak_information"], row["peak_information_low"],
                         row["peak_information_high"])
write_tsv(pd.DataFrame(rows, columns=conditional.LOCALISATION_COLUMNS), snakemake.output[0])
