"""emoprobe: where inside a language model is emotion recognised?

The logic of the Snakemake workflow, which its scripts call and tests import:

- the plan (run at parse time; no third-party import at module level): :mod:`~emoprobe.config` (checks),
  :mod:`~emoprobe.plan` (paths, what decides each output), :mod:`~emoprobe.provenance`, :mod:`~emoprobe.experiments`,
  :mod:`~emoprobe.grid` (which probes are fitted where), :mod:`~emoprobe.jobs` (jobs and their requests),
  :mod:`~emoprobe.architecture` (what each model is, from its files);
- the data: :mod:`~emoprobe.corpus`, :mod:`~emoprobe.h5io`, :mod:`~emoprobe.io` (atomic writes);
- the jobs' plumbing: :mod:`~emoprobe.errors` (what a user is told), :mod:`~emoprobe.device` (device choice),
  :mod:`~emoprobe.memory` (huge pages for extraction);
- the model: :mod:`~emoprobe.models` (loading), :mod:`~emoprobe.forward` (tokens, batches, the shared prefix),
  :mod:`~emoprobe.nethook` (hooks), :mod:`~emoprobe.extract` (hidden states), :mod:`~emoprobe.answers`,
  :mod:`~emoprobe.last_token` (edits at the last token), :mod:`~emoprobe.attention`;
- the experiments: :mod:`~emoprobe.experiments` (the registry, one entry each), :mod:`~emoprobe.windows` (which
  layers), :mod:`~emoprobe.edits` (the engine), :mod:`~emoprobe.ablation` (ablation, patching),
  :mod:`~emoprobe.steering` (promotion, surgery);
- the probes: :mod:`~emoprobe.probes` (protocol), :mod:`~emoprobe.logistic` and :mod:`~emoprobe.mlp` (trainers,
  on :mod:`~emoprobe.lbfgs`), :mod:`~emoprobe.appraisal`, :mod:`~emoprobe.baselines`;
- the numbers and pictures: :mod:`~emoprobe.scores`, :mod:`~emoprobe.tables`, :mod:`~emoprobe.figures`.
"""

__version__ = "0.1.0"
