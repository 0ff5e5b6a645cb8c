"""Every array the workflow stores is checksummed, and a byte changed after writing is refused by name.

Each kind of file is written by its real writer and read by its real reader; the end-to-end refusal (a finished
run's files flipped, the next run refusing them, the rebuild byte-identical) is in test_reliability.py.
"""

import h5py
import numpy as np
import pytest

from conftest import flip_bits
from emoprobe import h5io
from emoprobe.h5io import (FORMAT, HiddenStateWriter, ResultFileError, read_directions, read_directions_of_layers,
                           read_layer, read_predictions, write_attention, write_directions, write_predictions)

LABELS = {"model": "m", "location": "residual", "labels": ["anger", "joy", "fear"]}


def hidden_states(path):
    keys = [("residual", 1), ("mlp", 1)]
    with HiddenStateWriter(path, row_id=range(6), label_id=[0, 1, 2] * 2, n_tokens=[9] * 6, positions=[-1, -2],
                           keys=keys, hidden_size=4, storage_dtype="float16", attrs={"model": "m"}) as writer:
        writer.write(np.arange(6), {key: np.ones((6, 2, 4), np.float16) for key in keys})
    return lambda: read_layer(path, 1, "mlp", provenance={"model": "m"})


def predictions(path):
    predicted = np.zeros((2, 1, 6), np.int8)
    write_predictions(path, {"all/label": {"positions": [-1], "row_id": range(6), "label_id": [0, 1, 2] * 2,
                                           "control_label_id": [1, 2, 0] * 2, "prior_log2": np.full(6, -1.58),
                                           "predicted": predicted, "control_predicted": predicted,
                                           "log2_probability": np.full((2, 1, 6), -0.5)}}, layers=[1, 2],
                     attrs=LABELS)
    return lambda: read_predictions([path], provenance=LABELS)


def directions(path):
    write_directions(path, {"all/label": {"positions": [-1], "classes": [0, 1, 2],
                                          "weights": np.ones((2, 1, 3, 4), np.float32),
                                          "intercepts": np.zeros((2, 1, 3), np.float32)}}, layers=[1, 2],
                     attrs=LABELS)
    return lambda: read_directions(path, "all/label", 2, provenance=LABELS)


def attention(path):
    write_attention(path, np.arange(3), np.ones((3, 2, 2, 4), np.float32),
                    {1: (["Ev", "ént", "!"], np.ones((2, 2, 3), np.float32))}, attrs={"model": "m"})

    def read():  # no job reads it back: what a user's reader of the workflow's files does
        with h5io.open_file(path) as f:
            return h5io.read(f["shares"]), h5io.read(f["texts/1/weights"]), h5io.read(f["texts/1/tokens"])
    return read


# kind -> (writer returning its reader, the dataset whose bits are flipped, in which of its chunks: the directions'
# second, layer 2's, what read_directions reads)
KINDS = {"hidden states": (hidden_states, "mlp_01", 0), "predictions": (predictions, "all/label/predicted", 0),
         "directions": (directions, "all/label/weights", 1), "attention": (attention, "shares", 0)}


@pytest.mark.parametrize("kind", KINDS)
def test_every_array_is_checksummed_and_a_flipped_bit_is_refused_naming_file_and_dataset(kind, tmp_path):
    write, dataset, chunk = KINDS[kind]
    path = tmp_path / "file.h5"
    read = write(path)
    read()
    with h5py.File(path) as f:
        arrays = []
        f.visititems(lambda name, item: arrays.append(item) if isinstance(item, h5py.Dataset) else None)
        assert arrays and all(item.fletcher32 for item in arrays)
        assert h5io.attribute_value(f.attrs["format"]) == FORMAT
    flip_bits(path, dataset, chunk=chunk)
    with h5py.File(path) as f:
        assert f[dataset].shape  # the file still opens, its shapes intact
    with pytest.raises(ResultFileError, match=rf"{path}: dataset '/{dataset}' fails its checksum .*: its bytes changed "
                                              rf"after it was written: delete the file and run the same command "
                                              rf"again, which rebuilds it"):
        read()
    if kind == "directions":  # what steering reads: every layer, from whichever file holds it
        with pytest.raises(ResultFileError, match=rf"{path}: dataset '/{dataset}' fails its checksum"):
            read_directions_of_layers([path], "all/label", [1, 2], provenance=LABELS)


def test_a_flipped_bit_in_the_attributes_is_refused(tmp_path):
    path = tmp_path / "file.h5"
    read = predictions(path)
    raw = bytearray(path.read_bytes())
    at = raw.index(b'"joy"')  # inside the labels attribute: provenance is checksummed too
    raw[at + 1] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(ResultFileError, match=rf"{path}: its metadata .*fails its checksum .*: delete the file"):
        read()


def test_a_file_written_before_the_checksums_is_refused_not_read_unchecked(tmp_path):
    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as f:  # as emoprobe wrote them before: contiguous, no filter, no format
        f.create_dataset("layers", data=np.array([1]))
        f.attrs["model"] = "m"
    with pytest.raises(ResultFileError, match=rf"{path}: written by an older emoprobe, without checksums.*delete the file"):
        read_directions(path, "all/label", 1)
    with h5py.File(path, "a") as f:  # the format claimed, a dataset without its checksum
        f.attrs["format"] = np.bytes_(FORMAT)
    with pytest.raises(ResultFileError, match=rf"{path}: dataset '/layers' has no checksum"):
        read_directions(path, "all/label", 1)


def test_hidden_states_written_across_chunks_in_any_batch_order_read_back_in_corpus_order(tmp_path, monkeypatch):
    monkeypatch.setattr(h5io, "CHUNK_BYTES", 2 * 2 * 4 * 2)  # two texts a chunk: batches straddle chunks
    path, n = tmp_path / "chunk.h5", 11
    states = np.random.default_rng(0).standard_normal((n, 2, 4)).astype(np.float16)
    order = np.random.default_rng(1).permutation(n)
    with HiddenStateWriter(path, row_id=np.arange(n) + 100, label_id=[0] * n, n_tokens=[9] * n, positions=[-1, -2],
                           keys=[("residual", 3)], hidden_size=4, storage_dtype="float16", attrs={}) as writer:
        for batch in np.split(order, [3, 4, 9]):
            writer.write(batch, {("residual", 3): states[batch]})
    with h5py.File(path) as f:
        assert f["residual_03"].chunks == (2, 2, 4)
    read, meta = read_layer(path, 3)
    np.testing.assert_array_equal(read, states.astype(np.float32))
    assert meta["row_id"].tolist() == list(range(100, 100 + n))


def test_prediction_files_of_one_problem_must_agree_on_its_texts_labels_and_priors(tmp_path):
    """Two jobs' predictions of one problem are joined along the layers only where they hold the same texts, labels
    and folds' priors: a job whose priors differ (other folds) is refused by name, not paired with the other's."""
    def job(path, layer, prior):
        write_predictions(path, {"all/label": {
            "positions": [-1], "row_id": range(4), "label_id": [0, 1, 0, 1], "control_label_id": [-1] * 4,
            "prior_log2": prior, "predicted": np.zeros((1, 1, 4)), "control_predicted": np.full((1, 1, 4), -1),
            "log2_probability": np.full((1, 1, 4), -0.5)}}, layers=[layer], attrs=LABELS)

    job(tmp_path / "a.h5", 1, np.full(4, -1.0))
    job(tmp_path / "b.h5", 2, np.full(4, -1.0))
    joined = read_predictions([tmp_path / "b.h5", tmp_path / "a.h5"], provenance=LABELS)["all/label"]
    assert joined["layers"].tolist() == [1, 2] and joined["log2_probability"].shape == (2, 1, 4)
    job(tmp_path / "c.h5", 3, np.array([-1.0, -1.0, -2.0, -1.0]))
    with pytest.raises(ResultFileError, match="c.h5: problem 'all/label' holds other texts, labels, priors"):
        read_predictions([tmp_path / "a.h5", tmp_path / "c.h5"], provenance=LABELS)
