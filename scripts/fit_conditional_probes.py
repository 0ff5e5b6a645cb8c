"""Conditional probes at one location of one model: at each layer, what its states add to each baseline (the label
frequencies, the text's words as a bag of words, their mean input embedding), in bits of held-out cross-entropy,
with the per-text log2-probabilities kept for the localisation."""

import numpy as np
import pandas as pd
import torch

from emoprobe import conditional
from emoprobe.corpus import read_prompts
from emoprobe.device import pick_device
from emoprobe.errors import log_to, reported_as_message
from emoprobe.h5io import ResultFileError, read_stored_layer, read_word_embeddings, write_problems
from emoprobe.io import read_optional_tsv, write_tsv
from emoprobe.problems import fold_indices, probe_problem, probe_targets
from emoprobe.progress import layer_range
from emoprobe.provenance import conditional as conditional_provenance

log = log_to(snakemake.log[0])
torch.set_num_threads(1)  # as the probes: the bits of a fit must not depend on the thread count
model, location, labels = snakemake.wildcards.model, snakemake.wildcards.location, snakemake.params.labels
settings, layers, cells = snakemake.params.conditional, snakemake.params.layers, snakemake.params.cells
baseline_names = snakemake.params.baselines
fit = {"max_iter": settings["max_iter"], "tol": settings["tol"]}
inner = {"inner_folds": settings["inner_folds"], "selection_folds": settings["selection_folds"],
         "seed": settings["seed"]}
device = pick_device(settings["device"], needs_float64=True)
positions = sorted({p for by_problem in cells.values() for p in by_problem}, key=list(snakemake.params.positions).index)
log.info("fit_conditional_probes: model %s, location %s, layers %s, %s; beyond %s; on %s", model, location,
         layer_range(layers), ", ".join(f"{problem} at token(s) {ps}" for problem, ps in cells.items()),
         ", ".join(baseline_names), device)
with reported_as_message():
    prompts = read_prompts(snakemake.input.prompts).set_index("row_id")
    answers = read_optional_tsv(snakemake.input, "answers")
    _, meta = read_stored_layer(snakemake.input.states, layers[0], location, positions=positions,
                                provenance=snakemake.params.provenance)
    row_id = meta["row_id"]
    words = read_word_embeddings(snakemake.input.words, row_id, provenance=snakemake.params.words_provenance)
texts = prompts.loc[row_id, "text"].to_numpy(dtype=object)

# each problem's texts, labels, folds and baselines, fitted once for every layer
problems = {}
subsets = [name.split("/")[0] for name in cells if name.endswith("/label")]
for subset, target, rows, label_id in probe_targets(subsets, "all/answer" in cells, row_id, meta["label_id"], answers,
                                                    labels):
    name = f"{subset}/{target}"
    if name not in cells:
        continue
    problem = probe_problem(label_id, labels, settings["folds"])
    if not problem.scorable:
        log.info("%s: nothing scored: %s", name, problem.note)
        continue
    kept = rows[problem.rows]
    y = np.searchsorted(problem.labels, problem.label_id)
    K = len(problem.labels)
    splits = fold_indices(y, folds=settings["folds"], test_size=settings["test_size"], seed=settings["seed"],
                          stratify=settings["stratify"])
    fitters = {"frequencies": (conditional.frequencies(K), [None]),
               "text": (conditional.text_baseline(texts[kept], K, **fit), settings["text_C"]),
               "words": (conditional.logistic_baseline(words[kept], K, **fit, device=device), settings["words_C"])}
    baselines = {}
    for baseline in baseline_names:
        fitter, Cs = fitters[baseline]
        baselines[baseline] = conditional.nested(fitter, y, K, splits, Cs, **inner)
        log.info("%s, %s baseline: %.3f bits beyond the label frequencies (penalties %s)", name, baseline,
                 np.nanmean(baselines[baseline].log2_probability - baselines["frequencies"].log2_probability),
                 baselines[baseline].chosen)
    references = conditional.recalibrated(baselines, y, K, splits, Cs=settings["C"], **inner, **fit, device=device)
    log.info("%s, the baselines recalibrated: %s", name,
             ", ".join(f"{baseline} {np.nanmean(found.log2_probability - baselines['frequencies'].log2_probability):.3f}"
                       f" bits (penalties {found.chosen})" for baseline, found in references.items()))
    problems[name] = {"kept": kept, "y": y, "label_id": problem.label_id, "K": K, "splits": splits,
                      "baselines": baselines,
                      "references": references, "positions": cells[name], "joint": []}

rows_out = []
for layer in layers:
    with reported_as_message():
        states, layer_meta = read_stored_layer(snakemake.input.states, layer, location, positions=positions,
                                               provenance=snakemake.params.provenance)
        if not np.array_equal(layer_meta["row_id"], row_id):
            raise ResultFileError(f"{', '.join(snakemake.input.states)}: layer {layer}'s texts are not in the order of "
                                  f"layer {layers[0]}'s: delete the model's hidden-state files and rerun")
    for name, problem in problems.items():
        joint = np.full((len(problem["positions"]), len(baseline_names), len(problem["y"])), np.nan)
        for p, position in enumerate(problem["positions"]):
            x = states[problem["kept"], positions.index(position)]
            found = conditional.conditional_fits(x, problem["y"], problem["K"], problem["splits"],
                                                 problem["baselines"], Cs=settings["C"], **inner, **fit,
                                                 device=device, references=problem["references"])
            for b, baseline in enumerate(baseline_names):
                joint[p, b] = found[baseline].log2_probability
                subset, target = name.split("/")
                rows_out.append({"model": model, "location": location, "subset": subset, "target": target,
                                 "position": position, "layer": layer, "baseline": baseline,
                                 **conditional.information_row(found[baseline], problem["references"][baseline],
                                                               problem["baselines"][baseline],
                                                               problem["baselines"]["frequencies"])})
            log.info("%s layer %d, %s at token %d: %s", location, layer, name, position,
                     ", ".join(f"{row['information']:+.3f} bits beyond {row['baseline']} (C {row['C']})"
                               for row in rows_out[-len(baseline_names):]))
        problem["joint"].append(joint)
write_tsv(pd.DataFrame(rows_out, columns=conditional.CONDITIONAL_COLUMNS), snakemake.output.table)
write_problems(snakemake.output.probabilities,
               {name: {"positions": problem["positions"], "row_id": row_id[problem["kept"]],
                       "label_id": problem["label_id"],
                       "baseline_log2": np.stack([problem["references"][b].log2_probability
                                                  for b in baseline_names]),
                       "log2_probability": np.stack(problem["joint"])} for name, problem in problems.items()},
               conditional.PROBABILITY_DTYPES, layers=layers,
               attrs=conditional_provenance(model, location, labels, baseline_names))
