"""Steering the residual stream along probe directions (Tak et al. 2025): emotion promotion and appraisal surgery.

``promotion``: the residual stream pushed along an emotion probe's direction; the paper's normalised change of that
emotion's probability and the fraction of texts whose answer becomes it. ``surgery``: the residual stream pushed
along a signed combination of appraisal probes' directions; the answers' distribution before and after. Steering
*adds* to the residual stream at each layer of its window and the skip connection carries every step on, so its
rows also give ``displacement``, the norm of the steps' sum relative to the mean norm at the window's top layer.
Windows that would leave the model are dropped (the paper's centres), or, with ``clip_windows``, clipped and
labelled by the layers they did edit. Fractions come with Wilson 95 % intervals over texts; mean changes with a
bootstrap interval over texts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from emoprobe import last_token
from emoprobe.edits import Condition, ExperimentInputs, NothingToRun, Plan, clean_outputs
from emoprobe.h5io import directions_problems, read_appraisal_directions, read_directions_of_layers
from emoprobe.last_token import LastTokenBatch
from emoprobe.scores import mean_interval, wilson
from emoprobe.windows import describe, windows


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
        raise NothingToRun(f"the probe has no row of any of the emotions {settings['emotions'] or list(labels)}: "
                           "nothing to push along")
    units = {}
    for layer in edited:
        classes, weights = run.directions[layer]
        units[layer] = {int(c): raw_direction(w) for c, w in zip(classes, weights) if int(c) in emotions}
    plan, described = promotion_plan(emotions, settings["betas"], run.centres, settings["span"], run.n_layers, units,
                                     mean_norms, settings["clip_windows"])
    logits, clean = run.conditions(plan, len(described), "promotion")
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
    logits, clean = run.conditions(plan, len(described), "surgery")
    return answer_distribution_rows(logits, clean, described, run.labels)



def emotion_directions(paths: Sequence[str], settings: Mapping, layers: Sequence[int], provenance: Mapping
                       ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Promotion's directions: ``{layer: (classes, weights [k, hidden])}`` of the emotion probe
    ``settings["probe"]`` at token -1 (:func:`emoprobe.h5io.read_directions_of_layers`). Raises
    :class:`~emoprobe.edits.NothingToRun` where the probe jobs fitted none (too few texts of a label for the folds)."""
    if not all(settings["probe"] in directions_problems(path) for path in paths):
        raise NothingToRun(f"no {settings['probe']} probe was fitted (too few texts of a label for the folds): "
                           "nothing to push along")
    return read_directions_of_layers(paths, settings["probe"], layers, provenance=dict(provenance))


def appraisal_directions(paths: Sequence[str], settings: Mapping, layers: Sequence[int], provenance: Mapping
                         ) -> dict[int, dict[str, np.ndarray]]:
    """Surgery's directions: ``{layer: {appraisal: weights [hidden]}}`` of the ridge appraisal probes
    (:func:`emoprobe.h5io.read_appraisal_directions`)."""
    return read_appraisal_directions(paths, layers, provenance=dict(provenance))
