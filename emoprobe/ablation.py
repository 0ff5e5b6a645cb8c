"""Ablation and activation patching: each location edited in turn, in windows of layers (Tak et al. 2025).

``zero`` and ``random`` ablation: the fraction of texts whose answer is unchanged. ``patching``: over a fixed seeded
set of (target, source) pairs whose clean answers differ, the fraction whose patched answer is the source's clean
answer (``transfer``), the target's (``kept``), or neither. Ablation and patching *replace* their location's output,
so each row names the layers it edited (``first_layer``, ``last_layer``, ``span``; :mod:`emoprobe.windows`: a window
of the residual stream acts as its top layer alone). Fractions come with Wilson 95 % intervals over texts,
patching's allowing for pairs that share a source (:func:`emoprobe.scores.clustered_share`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from emoprobe import last_token
from emoprobe.edits import Condition, ExperimentInputs, NothingToRun, Plan, clean_outputs
from emoprobe.last_token import Edit, LastTokenBatch
from emoprobe.scores import clustered_share, wilson
from emoprobe.windows import describe, windows


def each_location_plan(locations: Sequence[str], centres: Sequence[int], span: int, n_layers: int, clip: bool,
                       edit: Callable[[np.ndarray, LastTokenBatch, tuple[str, int]], Edit]) -> tuple[Plan, list[dict]]:
    """Each location replaced by ``edit(indices, batch, (location, layer))`` at each layer of the window around each
    centre (:func:`emoprobe.windows.windows`): the plan, a group of conditions per centre, and one description per
    condition (:func:`emoprobe.windows.describe`), centres first."""
    edited = {location: windows(location, centres, span, n_layers, replaces=True, clip=clip) for location in locations}
    conditions = [(location, centre) for centre in centres for location in locations if centre in edited[location]]
    described = [describe(location, centre, edited[location][centre]) for location, centre in conditions]

    def plan(indices: np.ndarray, batch: LastTokenBatch) -> list[list[Condition]]:
        return [[{(location, layer): edit(indices, batch, (location, layer)) for layer in edited[location][centre]}
                 for location, c in conditions if c == centre] for centre in centres]

    return plan, described


def ablation_plan(kind: str, locations: Sequence[str], centres: Sequence[int], span: int, n_layers: int,
                  seed: int, row_ids: np.ndarray, clip: bool = False) -> tuple[Plan, list[dict]]:
    """Zero (``kind="zero"``) or random ablation of each location in the window of ``span`` layers around each
    centre (:func:`each_location_plan`).

    Random ablation replaces the output by Gaussian noise rescaled to the output's norm, drawn per text
    from ``(seed, row_id, location, layer)`` (:func:`emoprobe.last_token.gaussian_noise`), so a text gets
    the same noise whatever batch it is in; ``row_ids[i]`` is text ``i``'s.
    """
    if kind not in ("zero", "random"):
        raise ValueError(f"ablation kind {kind!r} is neither 'zero' nor 'random'")

    def edit(indices, batch, key):
        if kind == "zero":
            return last_token.zero
        hidden = batch.clean[("residual", 0)].shape[1]
        return last_token.scaled_noise(last_token.gaussian_noise(seed, row_ids[indices], key, hidden).to(
            batch.clean[key].device))

    return each_location_plan(locations, centres, span, n_layers, clip, edit)


def patching_pairs(clean_answer: np.ndarray, n_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed seeded set of up to ``n_pairs`` (target, source) text pairs whose clean answers differ, each text
    a target at most once: ``(targets, sources)``, int64 indices into ``clean_answer``, targets sorted.

    Targets are drawn at random among the texts that have a text of another answer; each target's source at random
    among the texts of other answers that are no pair's source yet, and only when none is left among all of them:
    outcomes of pairs that share a source are not independent (:func:`clustered_share` allows for those that remain).
    Fewer pairs when fewer texts qualify.
    """
    rng = np.random.default_rng(seed)
    answers, counts = np.unique(clean_answer, return_counts=True)
    eligible = np.flatnonzero(counts[np.searchsorted(answers, clean_answer)] < len(clean_answer))
    targets = np.sort(rng.permutation(eligible)[:n_pairs])
    used = np.zeros(len(clean_answer), dtype=bool)
    sources = np.empty(len(targets), dtype=np.int64)
    for i in rng.permutation(len(targets)):
        candidates = np.flatnonzero(clean_answer != clean_answer[targets[i]])
        fresh = candidates[~used[candidates]]
        sources[i] = rng.choice(fresh if len(fresh) else candidates)
        used[sources[i]] = True
    return targets.astype(np.int64), sources


def patching_plan(locations: Sequence[str], centres: Sequence[int], span: int, n_layers: int,
                  source_states: Mapping[tuple[str, int], torch.Tensor], clip: bool = False
                  ) -> tuple[Plan, list[dict]]:
    """Patching of each location in the window around each centre (:func:`each_location_plan`): each target's output
    replaced by its source's clean output there. ``source_states[key]`` is ``[n_targets, hidden]``, row ``i`` the
    source of target ``i`` (the texts the batches run are the targets, in that order)."""
    def edit(indices, batch, key):
        return last_token.replace_with(source_states[key][torch.as_tensor(indices)].to(batch.clean[key].device))

    return each_location_plan(locations, centres, span, n_layers, clip, edit)


def unchanged_rows(logits: np.ndarray, clean: np.ndarray, described: Sequence[dict]) -> pd.DataFrame:
    """One row per ablation condition: ``n_texts``, ``unchanged`` (the fraction of texts whose answer is their
    clean answer) and its Wilson 95 % interval ``unchanged_low``, ``unchanged_high``."""
    same = logits.argmax(-1) == clean.argmax(-1)[None]
    rows = []
    for description, kept in zip(described, same):
        low, high = wilson(int(kept.sum()), len(kept))
        rows.append({**description, "n_texts": len(kept), "unchanged": kept.mean(), "unchanged_low": low,
                     "unchanged_high": high})
    return pd.DataFrame(rows)


def patching_rows(logits: np.ndarray, target_clean: np.ndarray, source_answer: np.ndarray, sources: np.ndarray,
                  described: Sequence[dict]) -> pd.DataFrame:
    """One row per patching condition: ``n_pairs``, ``n_sources`` (distinct source texts; ``sources`` ``[n_pairs]``
    are their indices), and the fractions of pairs whose patched answer is the source's clean answer
    (``transfer``), the target's (``kept``) or neither, with 95 % intervals that allow for pairs sharing a source
    (:func:`clustered_share`)."""
    answer, target_answer = logits.argmax(-1), target_clean.argmax(-1)
    rows = []
    for description, patched in zip(described, answer):
        outcome = {"transfer": patched == source_answer, "kept": patched == target_answer}
        outcome["neither"] = ~(outcome["transfer"] | outcome["kept"])
        row = {**description, "n_pairs": len(patched), "n_sources": len(np.unique(sources))}
        for name, hit in outcome.items():
            share, low, high = clustered_share(hit, sources)
            row.update({name: share, f"{name}_low": low, f"{name}_high": high})
        rows.append(row)
    return pd.DataFrame(rows)


def run_ablation(kind: str, run: ExperimentInputs) -> pd.DataFrame:
    """Zero or random ablation (``kind``) of each location in each window: :func:`ablation_plan`."""
    settings = run.settings
    plan, described = ablation_plan(kind, settings["locations"], run.centres, settings["span"], run.n_layers,
                                    settings["seed"], run.row_ids, settings["clip_windows"])
    return unchanged_rows(*run.conditions(plan, len(described), f"{kind} ablation"), described)


def run_zero(run: ExperimentInputs) -> pd.DataFrame:
    """Zero ablation: :func:`run_ablation`."""
    return run_ablation("zero", run)


def run_random(run: ExperimentInputs) -> pd.DataFrame:
    """Random ablation: :func:`run_ablation`."""
    return run_ablation("random", run)


def run_patching(run: ExperimentInputs) -> pd.DataFrame:
    """Activation patching of each location in each window from one text into another: :func:`patching_plan`."""
    settings, n_texts, token_ids = run.settings, len(run.token_ids), run.token_ids
    keys = [(location, layer) for location in settings["locations"] for layer in run.edited_layers()]
    with run.clean_pass("patching", n_texts) as progress:
        states, clean = clean_outputs(run.batches(token_ids), keys, run.readout, n_texts, progress)
    answers = clean.argmax(-1)
    targets, sources = patching_pairs(answers, settings["n_pairs"], settings["seed"])
    if len(targets) == 0:
        raise NothingToRun(f"every one of the {n_texts} texts gets the same clean answer, {run.labels[answers[0]]!r}: "
                           "no pair of texts to patch")
    source_states = {key: torch.from_numpy(values[sources]) for key, values in states.items()}
    plan, described = patching_plan(settings["locations"], run.centres, settings["span"], run.n_layers,
                                    source_states, settings["clip_windows"])
    logits, target_clean = run.conditions(plan, len(described), "patching", [token_ids[t] for t in targets])
    return patching_rows(logits, target_clean, answers[sources], sources, described)
