"""The workflow's HDF5 files: hidden states, probe predictions and directions, attention weights.

A hidden-state file holds one extraction job's chunk of layers. Layout::

    /row_id     int64   [n_texts]            corpus ids, corpus order
    /label_id   int64   [n_texts]            index into attrs["labels"]
    /n_tokens   int64   [n_texts]            prompt length in tokens
    /positions  int64   [n_positions]        negative offsets from the prompt end
    /row_index  int64   [n_texts]            corpus-order index of each stored state row
    /residual_NN   float   [n_texts, n_positions, hidden_size]   residual stream after block NN (1-based;
                                                                 residual_00, in the first chunk: the token embeddings)
    /attention_NN  float   [n_texts, n_positions, hidden_size]   attention output of block NN
    /mlp_NN        float   [n_texts, n_positions, hidden_size]   MLP output of block NN

Only the locations asked for are stored. State rows are stored in the order they
were computed (batches sorted by prompt length), so each batch is one contiguous
write; :func:`read_layer` returns them in corpus order.

File attributes record the model source and revision, the prompt template, the
compute and storage dtypes, library versions and ``complete = True``, which is
set last. The file is written under a temporary name and renamed when whole.

Every file of this module is checksummed throughout (``format`` attribute :data:`FORMAT`): each dataset is chunked
with HDF5's Fletcher-32 filter, which HDF5 verifies on every read of a chunk, and the files are written in the
format of HDF5 1.10 (:data:`LIBVER`), whose superblock, object headers (attributes included: strings are stored
inline, never in the unchecked global heap) and chunk indices carry checksums of their own. Readers go through
:func:`open_file` and :func:`read`, which refuse a file of another format and turn a failed checksum into a
:class:`ResultFileError` naming the file and the dataset.

Predictions and directions files (:func:`write_predictions`, :func:`write_directions`) hold one group per probing
problem, with the attributes of :mod:`emoprobe.provenance`; every reader checks a file's attributes against what
its job expects (:func:`check_provenance`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np

from emoprobe.errors import UserError
from emoprobe.io import atomic_path


class ResultFileError(UserError):
    """An HDF5 file of the workflow (hidden states, predictions, directions) is missing, truncated, incomplete, of
    the wrong shape, or not this run's (:func:`check_provenance`)."""


# The ``format`` attribute of every file written here: Fletcher-32 on every dataset, checksummed metadata.
FORMAT = "emoprobe-hdf5-checksummed-1"
# The oldest HDF5 file format with checksummed metadata (1.10), up to one that HDF5 1.14 still reads.
LIBVER = ("v110", "v114")
# Target size of a hidden-state chunk: a layer is read whole, chunk by chunk, so any size a few times larger than
# the checksum's granularity serves; one this size keeps the writer's per-dataset chunk cache small.
CHUNK_BYTES = 1 << 20
# What to do with a file that fails a check: the failed job's outputs are gone, so the same command needs the file
# again and rebuilds it (a command whose results are all there would find nothing to do, and need none).
REBUILD = "delete the file and run the same command again, which rebuilds it"


def create_file(path, *, cache_bytes: int = 1 << 20) -> h5py.File:
    """A new HDF5 file at ``path`` for writing, in the checksummed format (:data:`LIBVER`, attribute ``format``
    :data:`FORMAT`); ``cache_bytes``: the chunk cache of each of its open datasets, which evicts full chunks
    first."""
    f = h5py.File(path, "w", libver=LIBVER, rdcc_nbytes=cache_bytes, rdcc_w0=1.0)
    write_attrs(f, {"format": FORMAT})
    return f


def create_dataset(group: h5py.Group, name: str, data=None, *, shape=None, dtype=None, chunks=True) -> h5py.Dataset:
    """The one way this module creates a dataset: chunked (``chunks``: a shape, or True for h5py's guess) with
    HDF5's Fletcher-32 checksum of every chunk, verified by HDF5 whenever the chunk is read. Strings must be
    fixed-length bytes (``numpy.bytes_``): variable-length data lives in HDF5's global heap, which no filter
    checks."""
    return group.create_dataset(name, data=data, shape=shape, dtype=dtype, chunks=chunks, fletcher32=True)


def write_attrs(obj: h5py.HLObject, attrs: dict) -> None:
    """Store ``attrs`` as attributes of ``obj`` (a file, group or dataset) where HDF5 checksums them: booleans and
    integers as numpy scalars, strings as fixed-length UTF-8 bytes, anything else as its JSON text
    (:func:`attribute_value` reads them back)."""
    for key, value in attrs.items():
        if isinstance(value, (bool, np.bool_)):
            value = np.bool_(value)
        elif isinstance(value, (int, np.integer)):
            value = np.int64(value)
        else:
            # str subclasses (Snakemake's params) become plain strings
            text = (str(value) if isinstance(value, str) else json.dumps(value)).encode()
            obj.attrs.create(key, text, dtype=h5py.string_dtype("utf-8", max(1, len(text))))
            continue
        obj.attrs[key] = value


@contextlib.contextmanager
def open_file(path) -> Iterator[h5py.File]:
    """Open a file this module wrote, for reading, refusing (:class:`ResultFileError`, naming ``path``) one that
    HDF5 cannot open (truncated, or its metadata fails its checksum) or one written in another format than
    :data:`FORMAT` (by an older emoprobe, without checksums). Read its datasets with :func:`read`."""
    if not Path(path).is_file():
        raise ResultFileError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ResultFileError(f"{path}: unreadable HDF5 file ({err}); it is truncated or corrupt: {REBUILD}") from None
    with f:
        try:
            stored = attribute_value(f.attrs.get("format"))
            if stored != FORMAT:
                written = "by an older emoprobe, without checksums" if stored is None else f"in format {stored!r}"
                raise ResultFileError(f"{path}: written {written}; this emoprobe reads {FORMAT!r} only (every array "
                                      f"checksummed): {REBUILD}")
            yield f
        except (OSError, KeyError) as err:
            # h5py raises a KeyError for an object whose header fails its checksum
            if isinstance(err, KeyError) and "checksum" not in str(err):
                raise
            raise ResultFileError(f"{path}: its metadata cannot be read or fails its checksum ({err}): it changed "
                                  f"after it was written: {REBUILD}") from None


def read(dataset: h5py.Dataset, selection=()) -> np.ndarray:
    """``dataset[selection]`` (all of it by default), every chunk read verified against its Fletcher-32 checksum.

    Raises :class:`ResultFileError` naming the file and the dataset when a checksum fails (a byte changed after
    the file was written: disk, copy or transfer) or the dataset has no checksum to verify.
    """
    path = dataset.file.filename
    if not dataset.fletcher32:
        raise ResultFileError(f"{path}: dataset {dataset.name!r} has no checksum, so it cannot be verified: "
                              f"{REBUILD}")
    try:
        return dataset[selection]
    except OSError as err:
        raise ResultFileError(f"{path}: dataset {dataset.name!r} fails its checksum ({err}): its bytes changed after "
                              f"it was written: {REBUILD}") from None


def dataset_key(location: str, layer: int) -> str:
    """Dataset name of a location in a 1-based layer."""
    return f"{location}_{layer:02d}"


class HiddenStateWriter:
    """Write one chunk file, batch by batch, atomically.

    Use as a context manager; on a clean exit the file is marked complete and
    moved to ``path``; on an exception the temporary file is removed.
    """

    def __init__(self, path, *, row_id, label_id, n_tokens, positions, keys, hidden_size,
                 storage_dtype: str, attrs: dict):
        """``keys``: the ``(location, layer)`` pairs to store."""
        self.path = Path(path)
        self.partial = atomic_path(self.path)
        self.tmp = Path(self.partial.__enter__())
        self.keys = list(keys)
        n_texts, n_positions = len(row_id), len(positions)
        # A chunk is a block of whole rows, so each layer, read whole, is read chunk by chunk. Batches fill the rows
        # in order: each dataset stays open with a cache of one chunk (what the job's memory slack covers), so a
        # chunk is checksummed and written once, when the next one starts, never read back batch by batch.
        # The rows spread evenly over the chunks, since the last chunk takes a whole chunk's space on disk too.
        row_bytes = max(1, n_positions * hidden_size * np.dtype(storage_dtype).itemsize)
        n_chunks = max(1, -(-n_texts * row_bytes // CHUNK_BYTES))
        rows = max(1, -(-n_texts // n_chunks))
        self.file = create_file(self.tmp, cache_bytes=rows * row_bytes + (1 << 16))
        for name, values in (("row_id", row_id), ("label_id", label_id), ("n_tokens", n_tokens),
                             ("positions", positions)):
            create_dataset(self.file, name, np.asarray(values, dtype=np.int64))
        self.row_index = create_dataset(self.file, "row_index", shape=(n_texts,), dtype=np.int64)
        self.row_index[:] = -1
        self.written = 0
        self.datasets = {}
        for location, layer in self.keys:
            ds = create_dataset(self.file, dataset_key(location, layer), shape=(n_texts, n_positions, hidden_size),
                                dtype=storage_dtype,
                                chunks=(rows, n_positions, hidden_size) if n_texts * row_bytes else True)
            write_attrs(ds, {"layer": layer, "location": location})
            self.datasets[(location, layer)] = ds
        write_attrs(self.file, {**attrs, "complete": False})

    def write(self, indices: np.ndarray, states: dict[tuple[str, int], np.ndarray]) -> None:
        """Store ``states[(location, layer)]`` (``[len(indices), n_positions, hidden]``), the states of the
        texts at corpus-order ``indices``, after the rows written so far.

        Raises :class:`ResultFileError` when a state is not finite (a float16 forward pass overflows
        where a residual stream exceeds 65504, as Gemma's does) or does not fit the storage dtype,
        rather than storing infinities or NaNs that every probe would silently be fitted on.
        """
        for (location, layer), dataset in self.datasets.items():
            values = states[(location, layer)]
            if not np.isfinite(values).all():
                raise ResultFileError(
                    f"{self.path}: {location} states of layer {layer} are not finite (inf or NaN); the forward "
                    f"pass overflowed its compute dtype: set extraction.dtype to float32 or bfloat16"
                )
            if dataset.dtype == np.float16 and np.abs(values).max() > np.finfo(np.float16).max:
                raise ResultFileError(
                    f"{self.path}: {location} states of layer {layer} reach {np.abs(values).max():.4g}, beyond "
                    f"float16's range; set storage_dtype: float32 (for this model or in extraction)"
                )
            dataset[self.written:self.written + len(indices)] = values
        self.row_index[self.written:self.written + len(indices)] = indices
        self.written += len(indices)

    def __enter__(self) -> HiddenStateWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Mark the file complete and rename it into place; on an exception (the caller's or a check's) the
        temporary file is removed instead (:func:`emoprobe.io.atomic_path`)."""
        try:
            if exc_type is None:
                row_index = self.row_index[:]
                if not np.array_equal(np.sort(row_index), np.arange(len(row_index))):
                    raise ResultFileError(f"{self.path}: {self.written} state rows written for {len(row_index)} "
                                          f"texts, not each text once")
                write_attrs(self.file, {"complete": True})
        except BaseException as err:
            self.file.close()
            self.partial.__exit__(type(err), err, err.__traceback__)
            raise
        self.file.close()
        self.partial.__exit__(exc_type, exc, tb)


def attribute_value(value):
    """A file attribute as Python: JSON text decoded, numpy scalars and arrays as Python values."""
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value.tolist() if hasattr(value, "tolist") else value


def check_provenance(path, attrs: dict, expected: dict | None) -> None:
    """Raise :class:`ResultFileError` naming ``path`` and the attribute when a file attribute differs from
    what the reading job expects (``expected``: attribute name -> value, as the writing job's params
    recorded it), so a stale or foreign file is never read as this run's."""
    for key, value in (expected or {}).items():
        if key not in attrs:
            raise ResultFileError(f"{path}: no attribute {key!r}; it was written by an older emoprobe or another "
                                  f"workflow, delete it and rerun")
        stored, wanted = attribute_value(attrs[key]), attribute_value(value)
        if stored != wanted:
            raise ResultFileError(f"{path}: attribute {key!r} is {stored!r}, this job expects {wanted!r}; the file "
                                  f"is not this run's, delete it and rerun")


def read_layer(path, layer: int, location: str = "residual", positions: list[int] | None = None, *,
               provenance: dict | None = None) -> tuple[np.ndarray, dict]:
    """Read one location of one layer and the row metadata, refusing anything not whole or not this run's.

    ``positions``, when given, selects those positions (in that order) instead of all. ``provenance``: file
    attributes the reading job expects (:func:`check_provenance`).

    Returns
    -------
    states : numpy.ndarray of float32, shape [n_texts, n_positions, hidden_size]
    meta : dict with ``row_id``, ``label_id`` (int64 arrays), ``positions`` (list of int)
        and ``attrs`` (the file attributes).
    """
    path = Path(path)
    with open_file(path) as f:
        attrs = dict(f.attrs)
        if not attrs.get("complete", False):
            raise ResultFileError(f"{path}: not marked complete; it was not finished, delete it and rerun")
        check_provenance(path, attrs, provenance)
        key = dataset_key(location, layer)
        if key not in f:
            held = sorted(k for k in f if f[k].ndim == 3)
            raise ResultFileError(f"{path}: no dataset {key!r}; it holds {held}")
        row_id, label_id, stored = read(f["row_id"]), read(f["label_id"]), read(f["positions"]).tolist()
        row_index, stored_states = read(f["row_index"]), read(f[key])
    expected = (len(row_id), len(stored))
    if stored_states.ndim != 3 or stored_states.shape[:2] != expected or len(label_id) != len(row_id) \
            or len(row_index) != len(row_id):
        raise ResultFileError(
            f"{path}: dataset {key!r} has shape {stored_states.shape}, expected "
            f"({expected[0]}, {expected[1]}, hidden_size) to match row_id, row_index and positions"
        )
    if positions is not None:
        missing = sorted(set(positions) - set(stored))
        if missing:
            raise ResultFileError(f"{path}: positions {missing} were not extracted; it holds {stored}")
        stored_states = stored_states[:, [stored.index(p) for p in positions]]
        stored = list(positions)
    states = np.empty_like(stored_states)
    states[row_index] = stored_states  # into corpus order
    if not np.isfinite(states).all():
        raise ResultFileError(f"{path}: dataset {key!r} holds non-finite values")
    meta = {"row_id": row_id, "label_id": label_id, "positions": stored, "attrs": attrs}
    return states.astype(np.float32, copy=False), meta


def read_stored_layer(paths: Sequence, layer: int, location: str = "residual", positions: list[int] | None = None, *,
                      provenance: dict | None = None) -> tuple[np.ndarray, dict]:
    """:func:`read_layer` from whichever of ``paths`` (one model's hidden-state chunk files, any order) stores
    ``location`` at ``layer``: the files say what they hold, so that a job reading several needs no map from layers to
    files, which would make the chunking (a scheduling choice) one of its params."""
    key = dataset_key(location, layer)
    for path in paths:
        with open_file(path) as f:
            if key in f:
                return read_layer(path, layer, location, positions, provenance=provenance)
    raise ResultFileError(f"no dataset {key!r} in any of {[str(p) for p in paths]}; delete them and rerun")


def write_predictions(path, problems: dict[str, dict], *, layers: Sequence[int], attrs: dict) -> None:
    """Store the pooled out-of-fold predictions of every probe of one job, atomically.

    Layout: ``/layers`` (what the leading axis of every ``predicted`` is) and a group per problem
    (``{subset}/{target}``) holding ``positions`` (int64 [n_positions]: the grid's positions of that problem),
    ``row_id``, ``label_id`` and ``control_label_id`` (int64 [m]), ``prior_log2`` (float64 [m]: log2 of each
    text's label frequency among its fold's training texts, :func:`emoprobe.problems.prior_log2`; for the logit lens,
    fitted on nothing, among all the problem's texts), ``predicted``, ``control_predicted`` (int8 [n_layers,
    n_positions, m], label ids, -1 where there is no control) and ``log2_probability`` (float32 [n_layers,
    n_positions, m]: log2 of the probability the text's fold's probe gave its label). Problems with nothing scored
    are left out.

    Parameters
    ----------
    problems : ``{name: {"positions", "row_id", "label_id", "control_label_id", "prior_log2": [m], "predicted",
        "control_predicted", "log2_probability": [n_layers, n_positions, m]}}``
    """
    dtypes = {"positions": np.int64, "row_id": np.int64, "label_id": np.int64, "control_label_id": np.int64,
              "prior_log2": np.float64, "predicted": np.int8, "control_predicted": np.int8,
              "log2_probability": np.float32}
    write_problems(path, problems, dtypes, layers=layers, attrs=attrs)


def _problem_groups(f: h5py.File) -> list[str]:
    """The ``{subset}/{target}`` groups of a predictions or directions file."""
    return [f"{subset}/{target}" for subset in f if isinstance(f[subset], h5py.Group) for target in f[subset]]


# the arrays of a predictions file stacked along the layers, and the dtype they are read as
STACKED = {"predicted": np.int64, "control_predicted": np.int64, "log2_probability": np.float64}


def read_predictions(paths: Sequence, *, provenance: dict | None = None) -> dict[str, dict]:
    """The predictions of several jobs of one model and location (:func:`write_predictions`), joined along the
    layers in layer order: ``{problem: {"row_id", "label_id", "control_label_id", "prior_log2", "predicted",
    "control_predicted", "log2_probability", "layers", "positions"}}`` (the labels and predictions int64, the
    log2-probabilities float64). Raises :class:`ResultFileError` when the jobs disagree on
    a problem's texts, labels, priors or positions, or a file's attributes differ from ``provenance``
    (:func:`check_provenance`)."""
    joined: dict[str, dict] = {}
    for path in paths:
        with open_file(path) as f:
            check_provenance(path, dict(f.attrs), provenance)
            layers = read(f["layers"])
            for name in _problem_groups(f):
                group = f[name]
                part = {key: read(group[key]) for key in group}
                positions = part.pop("positions").tolist()
                if name not in joined:
                    joined[name] = {**part, "layers": [layers], "positions": positions,
                                    **{key: [part[key]] for key in STACKED}}
                    continue
                seen = joined[name]
                if not all(np.array_equal(seen[key], part[key], equal_nan=key == "prior_log2")
                           for key in ("row_id", "label_id", "prior_log2")) or seen["positions"] != positions:
                    raise ResultFileError(f"{path}: problem {name!r} holds other texts, labels, priors or positions "
                                          f"than the other prediction files of its model and location")
                seen["layers"].append(layers)
                for key in STACKED:
                    seen[key].append(part[key])
    for problem in joined.values():
        layers = np.concatenate(problem["layers"])
        order = np.argsort(layers)
        problem["layers"] = layers[order]
        for key, dtype in STACKED.items():
            problem[key] = np.concatenate(problem[key]).astype(dtype)[order]
    return joined


def write_directions(path, problems: dict[str, dict], *, layers: Sequence[int], attrs: dict) -> None:
    """Store the probes fitted on all texts of each problem (the emotion probes' ``{subset}/{target}``, or the
    appraisal probes' ``appraisal``) of one job, atomically: what steering along a probe's direction reads.

    Layout: ``/layers`` and a group per problem holding ``positions`` (int64: those it was fitted at),
    ``classes`` (int64 [k]: the label ids, or appraisal indices, of the rows), ``weights`` (float32 [n_layers,
    n_positions, k, hidden]) and ``intercepts`` (float32 [n_layers, n_positions, k]), in the raw state space: a
    probe reads ``x @ weights[l, p].T + intercepts[l, p]`` of the stored state ``x``.
    """
    # a chunk per probe, what steering reads
    write_problems(path, problems, {"positions": np.int64, "classes": np.int64, "weights": np.float32,
                                    "intercepts": np.float32}, layers=layers, attrs=attrs,
                   chunks={"weights": lambda shape: (1, 1, *shape[2:])})


def write_problems(path, problems: dict[str, dict], dtypes: dict, *, layers: Sequence[int], attrs: dict,
                   chunks: dict | None = None) -> None:
    """Write a predictions or directions file atomically: ``/layers``, a group per problem holding its arrays
    (``dtypes``: array name -> numpy dtype; ``chunks``: array name -> function of its shape giving its chunk
    shape, where h5py's guess would not fit how it is read), and the file attributes ``attrs``."""
    with atomic_path(path) as partial, create_file(partial) as f:
        create_dataset(f, "layers", np.asarray(layers, dtype=np.int64))
        for name, arrays in problems.items():
            group = f.create_group(name)
            for key, dtype in dtypes.items():
                values = np.asarray(arrays[key], dtype=dtype)
                chunk = (chunks or {}).get(key)
                create_dataset(group, key, values, chunks=chunk(values.shape) if chunk and values.size else True)
        write_attrs(f, attrs)


def read_problems(path, *, provenance: dict | None = None) -> tuple[np.ndarray, dict[str, dict[str, np.ndarray]]]:
    """``(layers, {problem: {array name: array}})`` of a file :func:`write_problems` wrote, every array verified;
    raises :class:`ResultFileError` naming the file when its attributes differ from ``provenance``."""
    with open_file(path) as f:
        check_provenance(path, dict(f.attrs), provenance)
        return read(f["layers"]), {name: {key: read(f[name][key]) for key in f[name]} for name in _problem_groups(f)}


def read_directions(path, name: str, layer: int, position: int = -1, *, provenance: dict | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(classes, weights [k, hidden], intercepts [k])`` of problem ``name``'s probe at ``layer`` and
    ``position`` (:func:`write_directions`); raises :class:`ResultFileError` naming the file when it has no
    such problem, layer or position, or its attributes differ from ``provenance``."""
    with open_file(path) as f:
        check_provenance(path, dict(f.attrs), provenance)
        layers = read(f["layers"]).tolist()
        positions = read(f[name]["positions"]).tolist() if name in f else []
        if layer not in layers or position not in positions:
            held = {problem: read(f[problem]["positions"]).tolist() for problem in directions_problems(path)}
            raise ResultFileError(f"{path}: no probe {name!r} at layer {layer}, position {position} (it holds layers "
                                  f"{layers}, and these problems at these positions: {held})")
        group, l, p = f[name], layers.index(layer), positions.index(position)
        return read(group["classes"]), read(group["weights"], (l, p)), read(group["intercepts"], (l, p))


def directions_problems(path) -> list[str]:
    """The problems a directions file holds probes of (``all/label`` ..., or ``appraisal``), sorted: a problem
    the probe job could not score (too few texts of a label for the folds) is not among them."""
    with open_file(path) as f:
        names = []
        f.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Group) and "weights" in item
                     else None)
    return sorted(names)


def read_directions_of_layers(paths: Sequence, name: str, layers: Sequence[int], position: int = -1, *,
                              provenance: dict | None = None) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """``{layer: (classes, weights [k, hidden])}`` of problem ``name`` at ``position`` for each of ``layers``,
    from whichever of the directions files ``paths`` (the jobs of one location) holds it
    (:func:`read_directions`); raises :class:`ResultFileError` naming the files when a layer is in none."""
    held = {}
    for path in paths:
        with open_file(path) as f:
            held.update({layer: path for layer in read(f["layers"]).tolist()})
    missing = sorted(set(layers) - set(held))
    if missing:
        raise ResultFileError(f"no directions file of {[str(p) for p in paths]} holds layers {missing}")
    found = {}
    for layer in layers:
        classes, weights, _ = read_directions(held[layer], name, layer, position, provenance=provenance)
        found[layer] = (classes, weights)
    return found


def read_appraisal_directions(paths: Sequence, layers: Sequence[int], position: int = -1, *, provenance: dict
                              ) -> dict[int, dict[str, np.ndarray]]:
    """``{layer: {appraisal: weights [hidden]}}`` of the ridge appraisal probes at ``position`` for each of
    ``layers`` (:func:`read_directions_of_layers` of problem ``appraisal``), each row named by its stored class: an
    index into the file's ``appraisals`` attribute, which must be ``provenance``'s."""
    names = list(provenance["appraisals"])
    return {layer: {names[int(c)]: row for c, row in zip(classes, weights)} for layer, (classes, weights) in
            read_directions_of_layers(paths, "appraisal", layers, position, provenance=provenance).items()}


def write_word_embeddings(path, row_id: np.ndarray, embeddings: np.ndarray, *, attrs: dict) -> None:
    """Store each text's mean word embedding (:func:`emoprobe.words.mean_word_embeddings`) atomically: ``row_id``
    int64 [n] and ``embeddings`` float32 [n, hidden], the file attributes ``attrs``."""
    with atomic_path(path) as partial, create_file(partial) as f:
        create_dataset(f, "row_id", np.asarray(row_id, dtype=np.int64))
        create_dataset(f, "embeddings", np.asarray(embeddings, dtype=np.float32))
        write_attrs(f, attrs)


def read_word_embeddings(path, row_id: np.ndarray, *, provenance: dict | None = None) -> np.ndarray:
    """The stored word embeddings (:func:`write_word_embeddings`) of the texts ``row_id``, in that order, float32
    [len(row_id), hidden]; raises :class:`ResultFileError` naming the file when it lacks a text or its attributes
    differ from ``provenance``."""
    with open_file(path) as f:
        check_provenance(path, dict(f.attrs), provenance)
        stored, embeddings = read(f["row_id"]), read(f["embeddings"])
    where = {int(r): i for i, r in enumerate(stored)}
    missing = [int(r) for r in row_id if int(r) not in where]
    if missing:
        raise ResultFileError(f"{path}: no word embeddings of texts {missing[:5]} ({len(missing)} missing): {REBUILD}")
    return embeddings[[where[int(r)] for r in row_id]]


def write_attention(path, row_id: np.ndarray, shares: np.ndarray, kept: dict[int, tuple[Sequence[str], np.ndarray]],
                    attrs: dict) -> None:
    """Store the last token's attention of one model's texts, atomically.

    Layout: ``/row_id`` (int64 [n]), ``/shares`` (float32 [n, n_layers, n_heads, n_segments], attribute ``segments``:
    their names, :data:`emoprobe.attention.SEGMENTS`), and per text of ``kept`` (``{row_id: (tokens, weights)}``) a
    group ``/texts/{row_id}`` holding ``tokens`` (the prompt's tokens, strings) and ``weights`` (float32 [n_layers,
    n_heads, n_tokens]): the attention of the last token over every token of the prompt.
    """
    from emoprobe.attention import SEGMENTS

    with atomic_path(path) as partial, create_file(partial) as f:
        create_dataset(f, "row_id", np.asarray(row_id, dtype=np.int64))
        write_attrs(create_dataset(f, "shares", np.asarray(shares, dtype=np.float32)), {"segments": list(SEGMENTS)})
        for row, (tokens, weights) in kept.items():
            group = f.create_group(f"texts/{int(row)}")
            create_dataset(group, "tokens", np.array([token.encode() for token in tokens], dtype=np.bytes_))
            create_dataset(group, "weights", np.asarray(weights, dtype=np.float32))
        write_attrs(f, attrs)
