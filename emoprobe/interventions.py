"""The causal experiments of Tak et al. (2025) on the cached last-token path, as tidy tables.

Each experiment edits one location in a window of layers around a centre layer at the prompt's last token
(:mod:`emoprobe.last_token`) and compares the model's answer, the argmax over the label logits, with
its *clean* answer (the unedited run's): the bundled models answer few texts correctly, and almost always
with one label, so every metric is defined on the clean answer, as the paper's code effectively does.

Which layers a row is about (:func:`windows`): attention and MLP outputs are added to the residual stream, so
editing them in each layer of a window edits the window; the residual stream is *replaced* at the last token
after each edited block, so an edit at the top of a window overwrites whatever the window's lower layers did,
and a window of the residual stream acts exactly as its top layer edited alone. Ablation and patching therefore
edit the residual stream one layer at a time, and each row names the layers it edited (``first_layer``,
``last_layer``, ``span``). Steering *adds* to the residual stream at each layer of its window, and the skip
connection carries every step on: its rows also give ``displacement``, the norm of the steps' sum relative to the
mean norm at the window's top layer. Windows that would leave the model are dropped (the paper's centres), or,
with ``clip_windows``, clipped and labelled by the layers they did edit.

``zero`` and ``random`` ablation: the fraction of texts whose answer is unchanged. ``patching``: over a
fixed seeded set of (target, source) pairs whose clean answers differ, the fraction whose patched answer
is the source's clean answer (``transfer``), the target's (``kept``), or neither. ``promotion``: the
residual stream pushed along an emotion probe's direction; the paper's normalised change of that
emotion's probability and the fraction of texts whose answer becomes it. ``surgery``: the residual stream
pushed along a signed combination of appraisal probes' directions; the answers' distribution before and
after. Fractions come with Wilson 95 % intervals over texts (patching's allowing for pairs that share a source,
:func:`clustered_share`); mean changes with a bootstrap
interval over texts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from scipy import stats

from emoprobe import last_token
from emoprobe.experiments import editing
from emoprobe.last_token import Edit, LastTokenBatch
from emoprobe.progress import Progress
from emoprobe.scores import Z95, mean_interval, wilson

Condition = Mapping[tuple[str, int], Edit]
# one batch's conditions, in groups whose edits start at one layer (each group runs in passes of one start)
Plan = Callable[[np.ndarray, LastTokenBatch], list[list[Condition]]]


def condition_logits(batches: Iterable[tuple[np.ndarray, LastTokenBatch]], plan: Plan,
                     readout: Callable[[torch.Tensor], torch.Tensor], n_texts: int, max_rows: int = 2048,
                     progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Label logits of every condition of ``plan`` on every text, and the clean logits.

    Parameters
    ----------
    batches : ``(indices, batch)`` pairs covering the texts ``0 .. n_texts - 1`` once
        (:func:`emoprobe.last_token.iter_last_token_batches`).
    plan : gives a batch's conditions, grouped; every batch must give the same number in the same order.
    readout : the last block's output ``[..., hidden]`` -> label logits ``[..., n_labels]``
        (:func:`emoprobe.answers.label_readout`).
    max_rows : at most this many rows (conditions x texts) in one pass.
    progress : counts the runs (a condition on a text) of each pass when done.

    Returns
    -------
    logits : numpy.ndarray of float32, shape [n_conditions, n_texts, n_labels]
    clean : numpy.ndarray of float32, shape [n_texts, n_labels]
    """
    logits = clean = None
    for indices, batch in batches:
        groups = plan(indices, batch)
        out = []
        for group in groups:
            per_pass = max(1, max_rows // len(batch))
            for start in range(0, len(group), per_pass):
                out.append(readout(batch.run_many(group[start:start + per_pass])))
                if progress is not None:
                    progress.update(len(group[start:start + per_pass]) * len(indices))
        batch_logits = torch.cat(out).cpu().numpy()
        if logits is None:
            logits = np.full((len(batch_logits), n_texts, batch_logits.shape[-1]), np.nan, dtype=np.float32)
            clean = np.full((n_texts, batch_logits.shape[-1]), np.nan, dtype=np.float32)
        logits[:, indices] = batch_logits
        clean[indices] = readout(batch.clean[("residual", len(batch.blocks))]).cpu().numpy()
    if logits is None or np.isnan(clean).any():
        raise ValueError(f"the batches do not cover all {n_texts} texts")
    return logits, clean


def windows(location: str, centres: Sequence[int], span: int, n_layers: int, *, replaces: bool, clip: bool
            ) -> dict[int, list[int]]:
    """``{centre: the layers edited}`` for each centre that keeps a window: ``centre - span // 2 .. centre + span //
    2``; a window that leaves ``1 .. n_layers`` is dropped, or clipped with ``clip``. Where the edit ``replaces``
    the residual stream, a window acts as its top layer alone: the centre is then the one layer edited."""
    if replaces and location == "residual":
        return {centre: [centre] for centre in centres}
    found = {}
    for centre in centres:
        layers = last_token.layer_window(centre, span, n_layers)
        if clip or len(layers) == 2 * (span // 2) + 1:
            found[centre] = layers
    return found


def describe(location: str, centre: int, layers: Sequence[int]) -> dict:
    """A condition's row keys: ``location``, ``layer`` (the centre the tables and figures draw it at),
    ``first_layer``, ``last_layer`` and ``span`` (the layers it edited)."""
    return {"location": location, "layer": centre, "first_layer": min(layers), "last_layer": max(layers),
            "span": len(layers)}


def ablation_plan(kind: str, locations: Sequence[str], centres: Sequence[int], span: int, n_layers: int,
                  seed: int, row_ids: np.ndarray, clip: bool = False) -> tuple[Plan, list[dict]]:
    """Zero (``kind="zero"``) or random ablation of each location in the window of ``span`` layers around each
    centre (:func:`windows`): the plan and one description per condition (:func:`describe`), centres first.

    Random ablation replaces the output by Gaussian noise rescaled to the output's norm, drawn per text
    from ``(seed, row_id, location, layer)`` (:func:`emoprobe.last_token.gaussian_noise`), so a text gets
    the same noise whatever batch it is in; ``row_ids[i]`` is text ``i``'s.
    """
    if kind not in ("zero", "random"):
        raise ValueError(f"ablation kind {kind!r} is neither 'zero' nor 'random'")
    edited = {location: windows(location, centres, span, n_layers, replaces=True, clip=clip) for location in locations}
    conditions = [(location, centre) for centre in centres for location in locations if centre in edited[location]]
    described = [describe(location, centre, edited[location][centre]) for location, centre in conditions]

    def plan(indices: np.ndarray, batch: LastTokenBatch) -> list[list[Condition]]:
        hidden = batch.clean[("residual", 0)].shape[1]

        def edit(key):
            if kind == "zero":
                return last_token.zero
            return last_token.scaled_noise(last_token.gaussian_noise(seed, row_ids[indices], key, hidden).to(
                batch.clean[key].device))

        return [[{(location, layer): edit((location, layer)) for layer in edited[location][centre]}
                 for location, c in conditions if c == centre] for centre in centres]

    return plan, described


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


def clustered_share(hits: np.ndarray, clusters: np.ndarray) -> tuple[float, float, float]:
    """The share of ``hits`` (bool ``[n]``) and its 95 % interval when outcomes of the same cluster (``clusters``
    ``[n]``: each pair's source) may be alike: Wilson's interval at an effective sample size.

    With every cluster of one pair this is Wilson's interval. Otherwise the effective size is ``n / deff``, the
    design effect ``deff`` (at least 1) the ratio of the cluster-robust variance of the share, ``C / (C - 1) *
    sum_c (sum_{i in c} (hit_i - share))^2 / n^2`` over ``C`` clusters, to the binomial ``share (1 - share) / n``;
    never below Kish's effective number of clusters ``K = n^2 / sum_c n_c^2``, the least the pairs can be worth
    (every cluster's outcomes alike). That variance rests on the clusters, and on few of them when one is large, so
    the critical value is Student's t with ``K - 1`` degrees of freedom. Where the design effect cannot be estimated
    the effective size is ``K``: at that t where every outcome is alike, at the normal critical value where ``K <
    2`` (one cluster, or one holding nearly every pair): one source serving every pair gives the interval of a
    single outcome.
    ``tests/test_interventions.py`` checks its coverage by simulation with source effects, from one source to one per
    pair."""
    n = len(hits)
    share = float(np.mean(hits))
    ids, members = np.unique(clusters, return_inverse=True)
    if len(ids) == n:
        low, high = wilson(share * n, n)
        return share, low, high
    kish = n ** 2 / float(np.sum(np.bincount(members).astype(np.float64) ** 2))
    effective, z = kish, Z95
    if kish >= 2:
        z = float(stats.t.ppf(0.975, kish - 1))
        if 0 < share < 1:
            residual = np.bincount(members, weights=hits - share)
            robust = len(ids) / (len(ids) - 1) * np.sum(residual ** 2) / n ** 2
            effective = max(n / max(robust / (share * (1 - share) / n), 1.0), kish)
    low, high = wilson(share * effective, effective, z)
    return share, low, high


def patching_plan(locations: Sequence[str], centres: Sequence[int], span: int, n_layers: int,
                  source_states: Mapping[tuple[str, int], torch.Tensor], clip: bool = False
                  ) -> tuple[Plan, list[dict]]:
    """Patching of each location in the window around each centre (:func:`windows`): each target's output replaced
    by its source's clean output there. ``source_states[key]`` is ``[n_targets, hidden]``, row ``i`` the source of
    target ``i`` (the texts the batches run are the targets, in that order)."""
    edited = {location: windows(location, centres, span, n_layers, replaces=True, clip=clip) for location in locations}
    conditions = [(location, centre) for centre in centres for location in locations if centre in edited[location]]
    described = [describe(location, centre, edited[location][centre]) for location, centre in conditions]

    def plan(indices: np.ndarray, batch: LastTokenBatch) -> list[list[Condition]]:
        rows = torch.as_tensor(indices)
        return [[{(location, layer): last_token.replace_with(source_states[(location, layer)][rows].to(
                    batch.clean[(location, layer)].device)) for layer in edited[location][centre]}
                 for location, c in conditions if c == centre] for centre in centres]

    return plan, described


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


def raw_direction(weights: np.ndarray) -> np.ndarray:
    """The unit vector of a probe's weight row in the raw state space, float32 ``[hidden]``.

    ``weights`` are the raw-space weights (the standardisation folded in: ``w / sigma``), as the probe
    jobs save them; a zero row (a class the probe never saw) raises.
    """
    norm = float(np.linalg.norm(weights))
    if norm == 0:
        raise ValueError("a probe weight row of zeros has no direction")
    return (weights / norm).astype(np.float32)


def normalised_change(p_clean: np.ndarray, p_after: np.ndarray) -> np.ndarray:
    """The paper's promotion metric per text: ``delta = p_after - p_clean``, divided by ``1 - p_clean`` when
    positive (the room left to gain) and by ``p_clean`` when negative (the room left to lose); in [-1, 1]."""
    delta = p_after - p_clean
    room = np.where(delta > 0, 1 - p_clean, p_clean)
    return np.divide(delta, room, out=np.zeros_like(delta), where=room > 0)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (the label logits), in float64."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def promotion_plan(emotions: Sequence[int], betas: Sequence[float], centres: Sequence[int], span: int,
                   n_layers: int, directions: Mapping[int, np.ndarray], mean_norms: Mapping[int, float],
                   clip: bool = False) -> tuple[Plan, list[dict]]:
    """Emotion promotion: the residual stream of each layer ``l`` of the window around each centre pushed
    along the unit direction of emotion ``e``'s probe row at ``l``, ``h + beta * mean_norms[l] * u_e``.

    ``directions[l]`` is ``[n_labels, hidden]`` of unit rows (:func:`raw_direction` of the probe's raw-space
    weights at layer ``l``), ``mean_norms[l]`` the mean norm of the clean residual stream there at the last
    token, over the texts: ``beta`` is relative to it, since models' norms differ by orders of magnitude.
    Each description (:func:`describe`) holds ``emotion`` (label id), ``beta``, ``beta_absolute`` (one step's norm
    at the centre layer) and ``displacement`` (the steps' sum at the window's top layer, over its mean norm).
    """
    return _steering_plan({emotion: {layer: rows[emotion] for layer, rows in directions.items()}
                           for emotion in emotions}, "emotion", betas, centres, span, n_layers, mean_norms, clip)


def _steering_plan(named: Mapping[object, Mapping[int, np.ndarray]], name_key: str, betas: Sequence[float],
                   centres: Sequence[int], span: int, n_layers: int, mean_norms: Mapping[int, float],
                   clip: bool = False) -> tuple[Plan, list[dict]]:
    """The residual stream of each layer ``l`` of the window around each centre (:func:`windows`) pushed along
    ``named[n][l]`` (a unit vector ``[hidden]``), ``h + beta * mean_norms[l] * v``, for every name ``n`` and
    ``beta``; each description holds the name under ``name_key``, ``beta``, ``beta_absolute`` (one step's norm at
    the centre layer) and ``displacement`` (the norm of the steps' sum over the mean norm at the top layer)."""
    edited = windows("residual", centres, span, n_layers, replaces=False, clip=clip)
    described = []
    for centre, layers in edited.items():
        for name in named:
            total = sum(mean_norms[layer] * np.asarray(named[name][layer], dtype=np.float64) for layer in layers)
            for beta in betas:
                described.append({**describe("residual", centre, layers), name_key: name, "beta": beta,
                                  "beta_absolute": beta * mean_norms[centre],
                                  "displacement": abs(beta) * float(np.linalg.norm(total)) / mean_norms[max(layers)]})

    def plan(indices: np.ndarray, batch: LastTokenBatch) -> list[list[Condition]]:
        device = batch.clean[("residual", 0)].device
        steps = {(name, layer): torch.from_numpy(np.asarray(named[name][layer], dtype=np.float32)).to(device)
                 for name in named for layer in set().union(*edited.values())}
        return [[{("residual", layer): last_token.add(beta * mean_norms[layer] * steps[(name, layer)])
                  for layer in layers} for name in named for beta in betas] for layers in edited.values()]

    return plan, described


def promotion_rows(logits: np.ndarray, clean: np.ndarray, described: Sequence[dict], *, replicates: int = 1000,
                   seed: int = 0) -> pd.DataFrame:
    """One row per promotion condition: ``n_texts``; ``change``, the mean over texts of the paper's normalised
    change of the emotion's probability (:func:`normalised_change`, softmax over the label logits) with a
    studentised bootstrap 95 % interval (:func:`emoprobe.scores.mean_interval`); ``promoted``, the fraction of
    texts whose answer is the emotion, with its Wilson interval, next to ``clean_promoted``, that fraction without
    the edit."""
    p_clean, clean_answer = softmax(clean), clean.argmax(-1)
    rows = []
    for description, after in zip(described, logits):
        emotion = description["emotion"]
        change = normalised_change(p_clean[:, emotion], softmax(after)[:, emotion])
        promoted = after.argmax(-1) == emotion
        change_low, change_high = mean_interval(change, replicates, seed, support=(-1.0, 1.0))
        low, high = wilson(int(promoted.sum()), len(promoted))
        rows.append({**description, "n_texts": len(change), "change": change.mean(), "change_low": change_low,
                     "change_high": change_high, "promoted": promoted.mean(), "promoted_low": low,
                     "promoted_high": high, "clean_promoted": (clean_answer == emotion).mean()})
    return pd.DataFrame(rows)


def surgery_direction(weights: Mapping[str, np.ndarray], recipe: Mapping[str, int], held_fixed: Sequence[str] = ()
                      ) -> np.ndarray:
    """The unit direction of an appraisal recipe, float32 ``[hidden]``.

    ``v = sum(sign * w_a / |w_a|)`` over the recipe's appraisals ``a`` (``sign`` +1 or -1; ``weights[a]``
    the raw-space weight vector of the ridge probe of ``a``), then, as the paper describes, made orthogonal
    to the weight vectors of the appraisals ``held_fixed`` (so that moving along it leaves their probes'
    readings unchanged), and scaled to norm 1.
    """
    v = sum(sign * raw_direction(weights[name]).astype(np.float64) for name, sign in recipe.items())
    if held_fixed:
        basis, _ = np.linalg.qr(np.stack([np.asarray(weights[name], dtype=np.float64) for name in held_fixed], axis=1))
        v = v - basis @ (basis.T @ v)
    return raw_direction(v)


def surgery_plan(recipes: Mapping[str, Mapping[int, np.ndarray]], betas: Sequence[float], centres: Sequence[int],
                 span: int, n_layers: int, mean_norms: Mapping[int, float], clip: bool = False
                 ) -> tuple[Plan, list[dict]]:
    """Appraisal surgery: the residual stream of each layer ``l`` of the window pushed along a recipe's unit
    direction, ``h + beta * mean_norms[l] * v``; ``recipes[name]`` is ``{layer: v}`` (one direction per
    layer, from that layer's appraisal probes, or a seeded random one for a control)."""
    return _steering_plan(recipes, "recipe", betas, centres, span, n_layers, mean_norms, clip)


def answer_distribution_rows(logits: np.ndarray, clean: np.ndarray, described: Sequence[dict],
                             labels: Sequence[str]) -> pd.DataFrame:
    """One row per (condition, label): how many texts answer ``label`` without the edit (``clean_count``) and
    with it (``count``), and the difference (``shift``); and, the same on each of a condition's rows, ``n_texts``
    and ``changed``, the share of texts whose answer the edit changed, with its Wilson 95 % interval
    (``changed_low``, ``changed_high``). The shifts bound ``changed`` from below (half their absolute sum), since
    answers may trade places between labels."""
    clean_answer = clean.argmax(-1)
    clean_counts = np.bincount(clean_answer, minlength=len(labels))
    rows = []
    for description, after in zip(described, logits):
        answer = after.argmax(-1)
        counts = np.bincount(answer, minlength=len(labels))
        changed = int(np.count_nonzero(answer != clean_answer))
        low, high = wilson(changed, len(answer))
        per_condition = {"n_texts": len(answer), "changed": changed / len(answer), "changed_low": low,
                         "changed_high": high}
        rows.extend({**description, "label": label, "clean_count": int(clean_counts[k]), "count": int(counts[k]),
                     "shift": int(counts[k] - clean_counts[k]), **per_condition} for k, label in enumerate(labels))
    return pd.DataFrame(rows)


# one pass's batches of prompts, from their token ids (:func:`emoprobe.last_token.iter_last_token_batches`)
Batches = Callable[[Sequence[Sequence[int]]], Iterable[tuple[np.ndarray, LastTokenBatch]]]


def centre_layers(n_layers: int, every: int) -> list[int]:
    """Every ``every``-th layer counted down from the last (so the last, where the answer is read, is always
    one), ascending."""
    return sorted(range(n_layers, 0, -every))


def sample_indices(n_texts: int, size: int, seed: int) -> np.ndarray:
    """Sorted int64 indices of a seeded sample of ``size`` of ``n_texts`` texts; all of them when ``size`` is
    0 or at least ``n_texts``."""
    if size == 0 or size >= n_texts:
        return np.arange(n_texts, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n_texts, size, replace=False)).astype(np.int64)


def sample_of(prompts: pd.DataFrame, answers: pd.DataFrame | None, *, subset: str, texts: int, seed: int
              ) -> pd.DataFrame:
    """The texts every experiment runs on: the prompts of ``subset`` (``model_correct``: those whose ``answers`` row
    is correct), then a seeded sample of ``texts`` of them (:func:`sample_indices`)."""
    if subset == "model_correct":
        prompts = prompts[prompts["row_id"].isin(answers.loc[answers["correct"].astype(bool), "row_id"])]
    return prompts.iloc[sample_indices(len(prompts), texts, seed)]


def clean_outputs(batches: Iterable[tuple[np.ndarray, LastTokenBatch]], keys: Sequence[tuple[str, int]],
                  readout: Callable[[torch.Tensor], torch.Tensor], n_texts: int, progress: Progress | None = None
                  ) -> tuple[dict[tuple[str, int], np.ndarray], np.ndarray]:
    """The clean outputs at ``keys`` ``(location, layer)``, float32 ``[n_texts, hidden]`` each, and the clean
    label logits ``[n_texts, n_labels]``, of the texts ``0 .. n_texts - 1`` that ``batches`` cover (``progress``
    counts them)."""
    states, logits = {}, None
    for indices, batch in batches:
        for key in keys:
            value = batch.clean[key].float().cpu().numpy()
            states.setdefault(key, np.zeros((n_texts, value.shape[1]), dtype=np.float32))[indices] = value
        clean = readout(batch.clean[("residual", len(batch.blocks))]).cpu().numpy()
        if logits is None:
            logits = np.full((n_texts, clean.shape[1]), np.nan, dtype=np.float32)
        logits[indices] = clean
        if progress is not None:
            progress.update(len(indices))
    if logits is None or np.isnan(logits).any():
        raise ValueError(f"the batches do not cover all {n_texts} texts")
    return states, logits


def random_directions(count: int, layers: Iterable[int], hidden_size: int, seed: int
                      ) -> dict[str, dict[int, np.ndarray]]:
    """``count`` controls for surgery, ``random1`` ..: per layer a unit Gaussian direction ``[hidden]``
    float32, drawn from ``(seed, k, layer)``."""
    return {f"random{k}": {layer: raw_direction(np.random.default_rng([seed, k, layer]).standard_normal(hidden_size))
                           for layer in layers} for k in range(1, count + 1)}


def recipe_directions(weights: Mapping[int, Mapping[str, np.ndarray]], recipes: Mapping[str, Mapping],
                      orthogonalise: bool) -> dict[str, dict[int, np.ndarray]]:
    """Each recipe's unit direction at each layer of ``weights`` (``{layer: {appraisal: raw-space ridge weights
    [hidden]}}``), :func:`surgery_direction` of its ``push`` (``{appraisal: +1 or -1}``). With ``orthogonalise``
    (the paper's text), made orthogonal to the weights of the appraisals it ``hold``\ s; without (the paper's
    code), the plain signed sum."""
    return {name: {layer: surgery_direction(rows, recipe["push"], recipe["hold"] if orthogonalise else ())
                   for layer, rows in weights.items()}
            for name, recipe in recipes.items()}


class ExperimentInputs(NamedTuple):
    """What every experiment runs on (the arguments of :func:`run_experiment`)."""

    settings: Mapping
    batches: Batches
    readout: Callable[[torch.Tensor], torch.Tensor]
    token_ids: Sequence[Sequence[int]]
    row_ids: np.ndarray
    n_layers: int
    labels: Sequence[str]
    directions: Mapping[int, Mapping] | None
    max_rows: int
    log: logging.Logger | None = None  # where each pass logs how far it is

    def clean_pass(self, what: str, n_texts: int) -> Progress:
        """The progress of a pass of the clean prompts, in texts."""
        return Progress(self.log, n_texts, "texts", what=f"{what}, clean pass")

    def edited_runs(self, what: str, n_conditions: int, n_texts: int) -> Progress:
        """The progress of the edited runs, a condition on a text each; first a line that says how many."""
        if self.log is not None:
            self.log.info("%s: %d conditions x %d texts = %d edited runs", what, n_conditions, n_texts,
                          n_conditions * n_texts)
        return Progress(self.log, n_conditions * n_texts, "runs", what=f"{what}, edited runs")

    @property
    def centres(self) -> list[int]:
        return centre_layers(self.n_layers, self.settings["every"])

    def edited_layers(self) -> list[int]:
        """Every layer some window edits (the union of the windows around the centres, clipped to the model)."""
        span = self.settings["span"]
        return sorted(set().union(*(last_token.layer_window(c, span, self.n_layers) for c in self.centres)))


def run_ablation(kind: str, run: ExperimentInputs) -> pd.DataFrame:
    """Zero or random ablation (``kind``) of each location in each window: :func:`ablation_plan`."""
    settings, n_texts = run.settings, len(run.token_ids)
    plan, described = ablation_plan(kind, settings["locations"], run.centres, settings["span"], run.n_layers,
                                    settings["seed"], run.row_ids, settings["clip_windows"])
    with run.edited_runs(f"{kind} ablation", len(described), n_texts) as progress:
        logits, clean = condition_logits(run.batches(run.token_ids), plan, run.readout, n_texts, run.max_rows,
                                         progress)
    return unchanged_rows(logits, clean, described)


def run_patching(run: ExperimentInputs) -> pd.DataFrame:
    """Activation patching of each location in each window from one text into another: :func:`patching_plan`."""
    settings, n_texts, token_ids = run.settings, len(run.token_ids), run.token_ids
    keys = [(location, layer) for location in settings["locations"] for layer in run.edited_layers()]
    with run.clean_pass("patching", n_texts) as progress:
        states, clean = clean_outputs(run.batches(token_ids), keys, run.readout, n_texts, progress)
    answers = clean.argmax(-1)
    targets, sources = patching_pairs(answers, settings["n_pairs"], settings["seed"])
    if len(targets) == 0:  # a row that says why, as the probe tables give for a subset they cannot score
        return pd.DataFrame([{"note": f"every one of the {n_texts} texts gets the same clean answer, "
                                      f"{run.labels[answers[0]]!r}: no pair of texts to patch"}])
    source_states = {key: torch.from_numpy(values[sources]) for key, values in states.items()}
    plan, described = patching_plan(settings["locations"], run.centres, settings["span"], run.n_layers,
                                    source_states, settings["clip_windows"])
    with run.edited_runs("patching", len(described), len(targets)) as progress:
        logits, target_clean = condition_logits(run.batches([token_ids[t] for t in targets]), plan, run.readout,
                                                len(targets), run.max_rows, progress)
    return patching_rows(logits, target_clean, answers[sources], sources, described)


def residual_norms(run: ExperimentInputs, what: str) -> tuple[dict[int, float], int]:
    """The mean norm of the clean residual stream over the texts at each edited layer (steering's unit of β), and
    the stream's width; ``what`` names the experiment in the log."""
    edited = run.edited_layers()
    with run.clean_pass(what, len(run.token_ids)) as progress:
        states, _ = clean_outputs(run.batches(run.token_ids), [("residual", layer) for layer in edited], run.readout,
                                  len(run.token_ids), progress)
    return ({layer: float(np.linalg.norm(states[("residual", layer)], axis=1).mean()) for layer in edited},
            states[("residual", edited[0])].shape[1])


def run_promotion(run: ExperimentInputs) -> pd.DataFrame:
    """Emotion promotion: steering along each emotion's probe direction by each β: :func:`promotion_plan`."""
    settings, labels, edited = run.settings, run.labels, run.edited_layers()
    mean_norms, _ = residual_norms(run, "promotion")
    # a probe of a subset has rows only for the labels it saw (model_correct: the few the model gets right)
    seen = set.intersection(*(set(run.directions[layer][0].tolist()) for layer in edited))
    emotions = [labels.index(name) for name in settings["emotions"] or labels if labels.index(name) in seen]
    if not emotions:
        return pd.DataFrame([{"note": f"the probe has no row of any of the emotions "
                                      f"{settings['emotions'] or list(labels)}: nothing to push along"}])
    units = {}
    for layer in edited:
        classes, weights = run.directions[layer]
        units[layer] = {int(c): raw_direction(w) for c, w in zip(classes, weights) if int(c) in emotions}
    plan, described = promotion_plan(emotions, settings["betas"], run.centres, settings["span"], run.n_layers, units,
                                     mean_norms, settings["clip_windows"])
    with run.edited_runs("promotion", len(described), len(run.token_ids)) as progress:
        logits, clean = condition_logits(run.batches(run.token_ids), plan, run.readout, len(run.token_ids),
                                         run.max_rows, progress)
    table = promotion_rows(logits, clean, described, replicates=settings["bootstrap"], seed=settings["seed"])
    return table.assign(emotion=[labels[e] for e in table["emotion"]])


def run_surgery(run: ExperimentInputs) -> pd.DataFrame:
    """Appraisal surgery: steering along each recipe's appraisal direction (and random controls) by each β:
    :func:`surgery_plan`."""
    settings, edited = run.settings, run.edited_layers()
    mean_norms, hidden = residual_norms(run, "surgery")
    recipes = recipe_directions({layer: run.directions[layer] for layer in edited}, settings["recipes"],
                                settings["orthogonalise"])
    recipes.update(random_directions(settings["random_controls"], edited, hidden, settings["seed"]))
    plan, described = surgery_plan(recipes, settings["betas"], run.centres, settings["span"], run.n_layers,
                                   mean_norms, settings["clip_windows"])
    with run.edited_runs("surgery", len(described), len(run.token_ids)) as progress:
        logits, clean = condition_logits(run.batches(run.token_ids), plan, run.readout, len(run.token_ids),
                                         run.max_rows, progress)
    return answer_distribution_rows(logits, clean, described, run.labels)


# How each experiment that edits the model (emoprobe.experiments) is run.
RUNNERS: dict[str, Callable[[ExperimentInputs], pd.DataFrame]] = {
    "zero": partial(run_ablation, "zero"),
    "random": partial(run_ablation, "random"),
    "patching": run_patching,
    "promotion": run_promotion,
    "surgery": run_surgery,
}


def run_experiment(kind: str, settings: Mapping, *, batches: Batches, readout: Callable[[torch.Tensor], torch.Tensor],
                   token_ids: Sequence[Sequence[int]], row_ids: np.ndarray, n_layers: int, labels: Sequence[str],
                   directions: Mapping[int, Mapping] | None = None, max_rows: int = 2048,
                   log: logging.Logger | None = None) -> pd.DataFrame:
    """One experiment that edits the model (:func:`emoprobe.experiments.editing`) on the texts ``token_ids`` (whole
    prompts; ``row_ids[i]`` is text ``i``'s corpus row), its tidy table.

    ``settings``: ``span``, ``every`` (centre layers, :func:`centre_layers`), ``clip_windows`` (:func:`windows`),
    ``seed``, and per experiment:
    ``locations`` (ablation, patching), ``n_pairs`` (patching), ``betas`` (relative to the mean norm of the
    clean residual stream at each edited layer, over these texts), ``emotions`` (label names) and
    ``bootstrap`` (promotion), ``recipes`` (``{name: {"push": {appraisal: sign}, "hold": [appraisals]}}``),
    ``orthogonalise``, ``random_controls`` (surgery).
    ``directions``: promotion's ``{layer: (classes, weights [k, hidden])}`` of the emotion probe, surgery's
    ``{layer: {appraisal: weights [hidden]}}``, both in the raw state space. ``labels`` are the label names in
    the order of ``readout``'s logits (and of the probes' class ids). Promotion pushes only the emotions the
    probe has a row of. Patching texts that all get one clean answer, or a probe with no row of the emotions
    asked for, give a single row whose ``note`` says so. With ``log``, each pass over the texts logs how far it is
    (:class:`emoprobe.progress.Progress`): the clean pass in texts, the edited runs in runs (a condition on a text).
    """
    if kind not in RUNNERS:
        raise ValueError(f"experiment {kind!r} is not one of {editing()}")
    return RUNNERS[kind](ExperimentInputs(settings, batches, readout, token_ids, row_ids, n_layers, labels, directions,
                                          max_rows, log))
