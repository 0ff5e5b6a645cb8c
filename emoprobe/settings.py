"""What decides a probe, as typed values: built once from the config by the plan (:mod:`emoprobe.plan`) and passed
whole to the jobs through their rules' params.

They are NamedTuples, not dataclasses, because Snakemake's params trigger compares the ``repr`` of the builtin types
it knows (tuples among them) and silently ignores any other object: a NamedTuple's change reruns its jobs, a
dataclass's would not. They are data only (what each trainer does with its settings is
:func:`emoprobe.probes.fit_trainer`'s): the plan imports this module whenever the workflow is parsed, and a job's
imports stay those its script names.
"""

from __future__ import annotations

from typing import NamedTuple


def _from_section(cls, section: dict):
    """``cls``'s settings read from a config section, each field from the key of its name: so that a new setting
    is a field here and a key of the schema, and reaches its trainer with nothing else changed."""
    return cls(**{field: section[field] for field in cls._fields})


class Split(NamedTuple):
    """How a problem's texts are split into folds (:func:`emoprobe.problems.fold_indices`): stratified ``folds``-fold
    cross-validation, or with ``folds=0`` one train/test split of ``test_size``; ``seed`` also shuffles the
    control's labels."""

    folds: int
    test_size: float
    seed: int
    stratify: bool

    from_config = classmethod(_from_section)  # of the config's ``probe`` section


class Problems(NamedTuple):
    """Which probing problems there are (:func:`emoprobe.problems.probe_targets`): the true label on each of
    ``subsets`` (``all``, ``model_correct``) and, with ``answer_probe``, the model's own answer on all texts."""

    subsets: tuple[str, ...]
    answer_probe: bool

    @classmethod
    def from_config(cls, probe: dict) -> Problems:
        return cls(tuple(probe["subsets"]), probe["answer_probe"])


class Logistic(NamedTuple):
    """The linear probes' trainer: scikit-learn's ``LogisticRegression(C)`` objective, solved by
    :func:`emoprobe.logistic.fit_logistic` to ``tol`` in at most ``max_iter`` iterations. Its fits on all texts are
    the probes' directions."""

    C: float
    max_iter: int
    tol: float

    # class attributes (not annotated): not fields, so in no repr
    gives_directions = True
    from_config = classmethod(_from_section)  # of the config's ``probe`` section


class MLP(NamedTuple):
    """The non-linear probes' trainer: one hidden layer of ``hidden`` ReLU units with an L2 penalty ``alpha``
    (:func:`emoprobe.mlp.fit_mlp`), to ``tol`` in at most ``max_iter`` iterations. No directions: it is not
    linear."""

    hidden: int
    alpha: float
    max_iter: int
    tol: float

    gives_directions = False
    from_config = classmethod(_from_section)  # of the config's ``probe.nonlinear`` section


class Probing(NamedTuple):
    """Everything that decides a probe's fit and scores but where it is fitted (a job's grid cells are its own
    param): its problems, folds, trainer and the device it is fitted on (``cpu``, ``cuda`` or ``auto``,
    :func:`emoprobe.device.pick_device`)."""

    problems: Problems
    split: Split
    trainer: Logistic | MLP
    device: str


class Forward(NamedTuple):
    """How a job runs a model that is not the extraction's (the answers, the logit lens, the experiments, the
    attention, the word embeddings): in ``dtype`` on ``device`` (``auto``: :func:`emoprobe.device.pick_device`), as
    the extraction does."""

    dtype: str
    device: str

    from_config = classmethod(_from_section)  # of the config's ``extraction`` section
