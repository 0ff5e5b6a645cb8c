"""Reading, validating and subsampling the real crowd-enVENT file, and refusing bad copies of it."""

import gzip

import numpy as np
import pytest

from conftest import CORPUS, default_config
from emoprobe import corpus
from emoprobe.errors import ConfigError

DATASET = default_config()["dataset"]
TEMPLATE = default_config()["prompt"]["templates"]["zero_shot"]


def tidy(path):
    return corpus.checked_corpus(path, DATASET)


@pytest.fixture(scope="module")
def real():
    return tidy(CORPUS)


def test_real_corpus_is_read_whole(real):
    assert len(real) == 6600
    assert real["row_id"].is_unique
    counts = real["label"].value_counts()
    assert counts["guilt"] == counts["shame"] == 275
    assert (counts.drop(["guilt", "shame"]) == 550).all()
    assert "no-emotion" not in counts and counts["neutral"] == 550


def test_label_ids_follow_the_sorted_label_list(real):
    names = sorted(DATASET["labels"])
    assert names[6] == "neutral"
    assert (real["label"].map(names.index) == real["label_id"]).all()


def test_windows_1252_curly_quotes_become_unicode_not_c1_controls(real):
    text = "".join(real["text"])
    assert not any("\x80" <= ch <= "\x9f" for ch in text)
    assert sum(("\u2019" in t) or ("\u201c" in t) or ("\u2018" in t) for t in real["text"]) > 150


def test_utf8_copy_gives_the_same_prompts(real, tmp_path):
    copy = tmp_path / "utf8.csv"
    copy.write_text(CORPUS.read_bytes().decode("cp1252"), encoding="utf-8", newline="")
    assert corpus.decode_corpus(copy)[1] == "utf-8-sig"
    assert corpus.decode_corpus(CORPUS)[1] == "cp1252"
    again = tidy(copy)
    assert corpus.build_prompts(again, TEMPLATE).equals(corpus.build_prompts(real, TEMPLATE))


def test_prompts_table_round_trips_exactly(real, tmp_path):
    prompts = corpus.build_prompts(real, TEMPLATE)
    corpus.write_prompts(prompts, tmp_path / "p.tsv")
    back = corpus.read_prompts(tmp_path / "p.tsv")
    assert back["prompt"].tolist() == prompts["prompt"].tolist()
    assert back["row_id"].tolist() == prompts["row_id"].tolist()
    assert prompts["prompt"].iloc[0].startswith("What are the inferred emotions in the following contexts? Context: ")
    assert prompts["prompt"].str.endswith(" Answer:").all()


def test_stratified_subsample_is_seeded_proportional_and_in_file_order(real):
    a = corpus.stratified_subsample(real, 240, seed=42)
    b = corpus.stratified_subsample(real, 240, seed=42)
    c = corpus.stratified_subsample(real, 240, seed=7)
    assert a.equals(b) and not a.equals(c)
    assert len(a) == 240 and np.all(np.diff(a["row_id"].map(dict(zip(real.row_id, real.index)))) > 0)
    counts = a["label"].value_counts()
    assert counts["guilt"] == counts["shame"] == 10 and (counts.drop(["guilt", "shame"]) == 20).all()
    assert corpus.stratified_subsample(real, 0, seed=42) is real


def test_template_needs_exactly_one_text_field(real):
    corpus.build_prompts(real.head(2), "Context: {text} Answer:")
    for bad in ["no field", "{text} {text}", "{text} {other}", "{}", "{text"]:
        with pytest.raises(ConfigError, match="prompt.template"):
            corpus.build_prompts(real.head(2), bad)


def test_braces_in_texts_are_kept_literally(real):
    frame = real.head(1).assign(text="a {text} and {0} inside")
    assert corpus.build_prompts(frame, "C: {text} A:")["prompt"].iloc[0] == "C: a {text} and {0} inside A:"


# --- bad files: one clear message naming the file and what is wrong ---------------------------------

HEADER = CORPUS.read_bytes().split(b"\r\n", 1)[0]


def rows_of(n):
    return b"\r\n".join(CORPUS.read_bytes().split(b"\r\n")[: n + 1]) + b"\r\n"


def write(tmp_path, data: bytes):
    path = tmp_path / "bad.csv"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda: b"", "the file is empty"),
        (lambda: b"   \r\n", "the file is empty"),
        (lambda: gzip.compress(rows_of(5)), "gzip-compressed"),
        (lambda: HEADER + b"\r\n", "no data rows"),
        (lambda: rows_of(5)[:-300], "line 6"),
        (lambda: rows_of(3) + b'round-2,anger,999,"unterminated', "truncated mid-record"),
        (lambda: b"\x00\x01\x02binary\xff\xfe" * 20, "NUL bytes"),
    ],
    ids=["empty", "blank", "gzip", "header-only", "truncated-row", "truncated-quote", "binary"],
)
def test_unreadable_files_are_refused_with_the_file_named(tmp_path, make, expected):
    path = write(tmp_path, make())
    with pytest.raises(corpus.CorpusError) as err:
        tidy(path)
    assert str(path) in str(err.value) and expected in str(err.value)


def test_missing_column_is_named_with_the_columns_that_exist(tmp_path):
    data = rows_of(5).replace(b"hidden_emo_text", b"masked_text", 1)
    with pytest.raises(corpus.CorpusError, match=r"missing column\(s\) \['hidden_emo_text'\].*masked_text"):
        tidy(write(tmp_path, data))


def test_unknown_labels_are_named(tmp_path):
    data = rows_of(5).replace(b"\r\nround-2,anger,", b"\r\nround-2,angry,", 1)
    with pytest.raises(corpus.CorpusError, match=r"unknown label\(s\) \['angry'\]"):
        tidy(write(tmp_path, data))


def test_empty_texts_are_counted_and_located(real, tmp_path):
    table = corpus.read_corpus_table(CORPUS).head(6)
    table.loc[[1, 4], "hidden_emo_text"] = ["", "   "]
    path = tmp_path / "blank.csv"
    table.to_csv(path, index=False)
    with pytest.raises(corpus.CorpusError, match=r"empty or whitespace-only in 2 row\(s\): line\(s\) 3, 6"):
        tidy(path)


def test_duplicate_ids_are_named(tmp_path):
    table = corpus.read_corpus_table(CORPUS).head(6)
    table.loc[3, "text_id"] = table.loc[1, "text_id"]
    path = tmp_path / "dup.csv"
    table.to_csv(path, index=False)
    with pytest.raises(corpus.CorpusError, match=rf"duplicate ids \[{table.loc[1, 'text_id']}\] on line\(s\) 3, 5"):
        tidy(path)


def test_appraisal_ratings_are_read_as_numbers(real):
    assert len(DATASET["appraisal_columns"]) == 21
    ratings = real[DATASET["appraisal_columns"]]
    assert ratings.dtypes.unique().tolist() == [np.float64]
    assert ratings.min().min() == 1 and ratings.max().max() == 5


def test_a_rating_that_is_not_a_number_is_located(tmp_path):
    table = corpus.read_corpus_table(CORPUS).head(6)
    table.loc[2, "urgency"] = "high"
    path = tmp_path / "rating.csv"
    table.to_csv(path, index=False)
    with pytest.raises(corpus.CorpusError, match=r"appraisal column 'urgency' must hold numbers; not so on line\(s\) 4"):
        tidy(path)


def test_a_bad_corpus_stops_the_workflow_before_any_job_starts(tmp_path):
    """Checked when the workflow is parsed: the run ends within seconds, before the models are prepared."""
    import time

    from conftest import run_snakemake, small_config, with_changes

    bad = tmp_path / "corpus.csv"
    bad.write_bytes(CORPUS.read_bytes().replace(b",hidden_emo_text,", b",hidden_text,", 1))
    start = time.monotonic()
    result = run_snakemake(tmp_path, with_changes(small_config(), dataset__path=str(bad)), "--cores", "1", timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and time.monotonic() - start < 60
    assert f"invalid corpus: {bad}: missing column(s) ['hidden_emo_text']" in output, output[-3000:]
    assert "Traceback" not in output and "Building DAG" not in output and not (tmp_path / "resources").exists()
