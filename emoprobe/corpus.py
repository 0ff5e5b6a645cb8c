"""Read, validate and subsample the crowd-enVENT corpus, and build the prompts.

The corpus file is Windows-1252 (its curly quotes are bytes 0x91-0x94); a UTF-8
copy of the same table is accepted and yields the same text.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pandas as pd

from emoprobe.config import check_template
from emoprobe.errors import UserError


class CorpusError(UserError):
    """The corpus file cannot be used; the message names the file and what is wrong."""


def decode_corpus(path: str | Path, encoding: str = "auto") -> tuple[str, str]:
    """Decode the corpus file to text.

    ``encoding="auto"`` takes UTF-8 (with or without a byte-order mark) when the
    bytes are valid UTF-8 and Windows-1252 otherwise; Windows-1252 bytes outside
    ASCII are never valid UTF-8, so the two cannot be confused.

    Returns
    -------
    text : str
    encoding : str
        The encoding actually used, ``"utf-8-sig"`` or ``"cp1252"`` under auto.
    """
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: corpus file not found")
    raw = path.read_bytes()
    if not raw.strip():
        raise CorpusError(f"{path}: the file is empty; expected a CSV table with a header row")
    if raw[:2] == b"\x1f\x8b":
        raise CorpusError(f"{path}: this is gzip-compressed data, not a CSV table; decompress it first")
    candidates = ["utf-8-sig", "cp1252"] if encoding == "auto" else [encoding]
    for candidate in candidates:
        try:
            text = raw.decode(candidate)
        except UnicodeDecodeError as err:
            last_error = err
            continue
        if "\x00" in text:
            raise CorpusError(f"{path}: contains NUL bytes; expected a text CSV table, not binary data")
        return text, candidate
    raise CorpusError(
        f"{path}: cannot be decoded as {' or '.join(candidates)} "
        f"(byte 0x{raw[last_error.start]:02x} at offset {last_error.start})"
    )


def read_corpus_table(path: str | Path, encoding: str = "auto") -> pd.DataFrame:
    """Parse the corpus CSV into a table of strings, checking every record is whole.

    Returns
    -------
    pandas.DataFrame
        One row per record, every column ``str`` (numbers are converted later, by
        whoever needs them), with attribute ``attrs["line"]`` (int64 ``[n_records]``): the 1-based file line
        on which each record ends, for error messages.
    """
    text, _ = decode_corpus(path, encoding)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
        rows, lines = [], []
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise CorpusError(
                    f"{path}, line {reader.line_num}: {len(row)} fields where the header has "
                    f"{len(header)}; the file is truncated or not a comma-separated table"
                )
            rows.append(row)
            lines.append(reader.line_num)
    except csv.Error as err:
        raise CorpusError(
            f"{path}, line {reader.line_num}: malformed CSV ({err}); the file is truncated mid-record "
            "or not a CSV table"
        ) from None
    if len(header) < 2:
        raise CorpusError(f"{path}: header {header!r} has fewer than two columns; expected a CSV table")
    if not rows:
        raise CorpusError(f"{path}: the header is there but no data rows follow")
    duplicated = sorted({c for c in header if header.count(c) > 1})
    if duplicated:
        raise CorpusError(f"{path}: duplicate column names {duplicated}")
    table = pd.DataFrame(rows, columns=header, dtype=str)
    # an array, not a list: pandas deep-copies attrs into every table derived from this one
    table.attrs["line"] = np.asarray(lines, dtype=np.int64)
    return table


def validate_corpus(
    table: pd.DataFrame,
    path: str | Path,
    *,
    id_column: str,
    text_column: str,
    label_column: str,
    labels: list[str],
    rename: dict[str, str],
    appraisal_columns: list[str] = (),
) -> pd.DataFrame:
    """Check the columns, labels, texts, ids and appraisal ratings, and return the tidy corpus.

    Returns
    -------
    pandas.DataFrame
        Columns ``row_id`` (int64), ``label`` (str, after ``rename``), ``label_id``
        (int64, index in ``sorted(labels)``), ``text`` (str) and one float64 column
        per appraisal, in file order.
    """
    missing = [c for c in (id_column, text_column, label_column, *appraisal_columns) if c not in table.columns]
    if missing:
        raise CorpusError(
            f"{path}: missing column(s) {missing}; the file has columns {list(table.columns)}"
        )
    lines = np.asarray(table.attrs["line"])

    def where(mask: np.ndarray) -> str:
        shown = ", ".join(str(n) for n in lines[mask][:10])
        more = f" and {mask.sum() - 10} more" if mask.sum() > 10 else ""
        return f"line(s) {shown}{more}"

    ids = pd.to_numeric(table[id_column].str.strip(), errors="coerce")
    bad_ids = ids.isna().to_numpy() | (ids.to_numpy() % 1 != 0)
    if bad_ids.any():
        raise CorpusError(f"{path}: column {id_column!r} must hold integer ids; not so on {where(bad_ids)}")
    dup_ids = ids.duplicated(keep=False).to_numpy()
    if dup_ids.any():
        values = sorted(set(ids[dup_ids].astype(int)))[:10]
        raise CorpusError(f"{path}: column {id_column!r} has duplicate ids {values} on {where(dup_ids)}")

    label = table[label_column].str.strip().replace(rename)
    unknown = sorted(set(label) - set(labels))
    if unknown:
        raise CorpusError(
            f"{path}: column {label_column!r} has unknown label(s) {unknown}; "
            f"expected one of {sorted(labels)} (after renaming {rename})"
        )
    text = table[text_column]
    empty = (text.str.strip() == "").to_numpy()
    if empty.any():
        raise CorpusError(
            f"{path}: column {text_column!r} is empty or whitespace-only in {empty.sum()} row(s): {where(empty)}"
        )
    ratings = {}
    for column in appraisal_columns:
        values = pd.to_numeric(table[column].str.strip(), errors="coerce")
        bad = ~np.isfinite(values.to_numpy(dtype=float))
        if bad.any():
            raise CorpusError(f"{path}: appraisal column {column!r} must hold numbers; not so on {where(bad)}")
        ratings[column] = values.to_numpy(dtype=np.float64)
    order = sorted(labels)
    return pd.DataFrame(
        {
            "row_id": ids.astype("int64").to_numpy(),
            "label": label.to_numpy(),
            "label_id": label.map({name: i for i, name in enumerate(order)}).astype("int64").to_numpy(),
            "text": text.to_numpy(),
            **ratings,
        }
    )


def checked_corpus(path: str | Path, dataset: dict) -> pd.DataFrame:
    """Read and validate the corpus at ``path`` with the settings of the config's ``dataset`` section
    (encoding, columns, labels, renaming, appraisal columns); the tidy corpus of :func:`validate_corpus`.

    The workflow calls it when it is parsed, so a bad corpus stops it before any job starts, and again in
    the job that writes the prompts."""
    table = read_corpus_table(path, dataset["encoding"])
    return validate_corpus(table, path, id_column=dataset["id_column"], text_column=dataset["text_column"],
                           label_column=dataset["label_column"], labels=dataset["labels"],
                           rename=dataset["rename"], appraisal_columns=dataset["appraisal_columns"])


def stratified_subsample(corpus: pd.DataFrame, limit: int, seed: int) -> pd.DataFrame:
    """Take ``limit`` rows with the label proportions of the whole corpus, in file order.

    ``limit == 0`` or ``limit >= len(corpus)`` returns the corpus unchanged.
    """
    if limit == 0 or limit >= len(corpus):
        return corpus
    from sklearn.model_selection import train_test_split  # here: the parse-time corpus check needs no sklearn

    n_labels = corpus["label"].nunique()
    if limit < n_labels:
        raise CorpusError(f"dataset.limit={limit} is smaller than the number of labels ({n_labels})")
    kept, _ = train_test_split(
        np.arange(len(corpus)), train_size=limit, stratify=corpus["label"], random_state=seed
    )
    return corpus.iloc[np.sort(kept)].reset_index(drop=True)


def build_prompts(corpus: pd.DataFrame, template: str) -> pd.DataFrame:
    """Add a ``prompt`` column: ``template`` with ``{text}`` replaced by each text."""
    check_template(template)  # before a user template can format anything else
    return corpus.assign(prompt=[template.format(text=t) for t in corpus["text"]])


def write_prompts(prompts: pd.DataFrame, path: str | Path) -> None:
    """Write the prompts table as UTF-8 TSV (fields with tabs or newlines are quoted)."""
    prompts.to_csv(path, sep="\t", index=False, encoding="utf-8", lineterminator="\n")


def read_prompts(path: str | Path) -> pd.DataFrame:
    """Read a table written by :func:`write_prompts`, texts kept exactly."""
    return pd.read_csv(
        path, sep="\t", encoding="utf-8", keep_default_na=False, dtype={"text": str, "prompt": str, "label": str}
    )


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
