"""load_corpus: every format, field selection, labels and ids, and clear errors with the place."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nncd_ray.data.loading import infer_format, load_corpus, normalise_labels, split_fields
from nncd_ray.errors import DatasetNotFound, InputError

AGNEWS_LIKE = (
    '"3","Fears for T N pension","Unions representing workers at Turner   Newall say"\n'
    '"4","The Race is On","SPACE.com - TORONTO, Canada -- A second\\team of rocketeers"\n'
    '"2","Quote ""inside""","line one\nline two of a quoted field"\n'
)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# ---------------------------------------------------------------- JSON lines


def test_jsonl_defaults(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"id": "a", "text": "first", "label": 1},
            {"id": "b", "text": "second ü", "label": "2"},
        ],
    )
    corpus = load_corpus(path)
    assert corpus.ids == ("a", "b")
    assert corpus.texts == ("first", "second ü")
    assert corpus.labels == (1, 2)  # "2" parses as an int, so all labels are ints
    assert corpus.source == str(path)


def test_jsonl_without_label_and_id_fields_uses_none_and_row_numbers(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "x"}\n\n{"text": "y"}\n', encoding="utf-8")  # blank line skipped
    corpus = load_corpus(path)
    assert corpus.labels is None and corpus.ids == ("0", "1")


def test_json_array_and_string_labels(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"body": "x", "topic": "a"}, {"body": "y", "topic": 3}]))
    corpus = load_corpus(path, text_fields=["body"], label_field="topic")
    assert corpus.labels == ("a", "3")


def test_several_text_fields_joined_with_a_space(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"title": "T", "body": "B"}, {"title": "", "body": "b"}]
    )
    assert load_corpus(path, text_fields="title,body").texts == ("T B", " b")


@pytest.mark.parametrize(
    ("records", "kwargs", "message"),
    [
        ([{"text": "x"}, {"txt": "y"}], {}, r"line 2 has no text field 'text'"),
        ([{"text": "x"}, {"text": ""}], {}, r"line 2 has empty document text"),
        ([{"text": "x"}, {"text": 5}], {}, r"line 2: text field 'text' holds int"),
        (
            [{"text": "x", "id": "a"}, {"text": "y", "id": "a"}],
            {},
            r"duplicate id 'a' at line 1 and line 2",
        ),
        ([{"text": "x", "label": 1}, {"text": "y"}], {}, r"line 2 has no label 'label'"),
        ([{"text": "x", "id": "a"}, {"text": "y"}], {}, r"line 2 has no id 'id'"),
        ([{"text": "x"}], {"label_field": "label"}, r"line 1 has no label 'label'"),
        ([{"text": "x"}], {"id_field": "id"}, r"line 1 has no id 'id'"),
    ],
)
def test_jsonl_errors_name_the_line(
    tmp_path: Path, records: list[dict], kwargs: dict, message: str
) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", records)
    with pytest.raises(InputError, match=message) as info:
        load_corpus(path, **kwargs)
    assert str(path) in str(info.value)


def test_explicit_default_names_are_required(tmp_path: Path) -> None:
    """label_field="label" passed explicitly must exist; the untouched default may be absent."""
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "x"}])
    assert load_corpus(path).labels is None
    with pytest.raises(InputError, match="no label"):
        load_corpus(path, label_field="label")


def test_invalid_json_and_non_objects(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(InputError, match="line 2 is not valid JSON"):
        load_corpus(path)
    path.write_text('{"text": "ok"}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(InputError, match="line 2 is not a JSON object"):
        load_corpus(path)


def test_invalid_utf8_names_byte_offset_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "bad \xff here"}\n')
    with pytest.raises(InputError, match=r"invalid UTF-8 at byte offset 29 \(line 2, byte 15"):
        load_corpus(path)


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="is empty"):
        load_corpus(empty)
    blank = tmp_path / "blank.csv"
    blank.write_text("\n\n")
    with pytest.raises(InputError, match="is empty"):
        load_corpus(blank)
    with pytest.raises(DatasetNotFound, match="no such file"):
        load_corpus(tmp_path / "absent.jsonl")
    with pytest.raises(FileNotFoundError):  # DatasetNotFound is also a FileNotFoundError
        load_corpus(tmp_path / "absent.csv")


def test_unknown_suffix_and_format(tmp_path: Path) -> None:
    path = tmp_path / "d.txt"
    path.write_text("x")
    with pytest.raises(InputError, match="cannot tell the format"):
        load_corpus(path)
    with pytest.raises(InputError, match="unknown input format"):
        load_corpus(path, format="xml")


# ---------------------------------------------------------------- CSV / TSV


def test_agnews_style_csv_by_column_numbers(tmp_path: Path) -> None:
    path = tmp_path / "test.csv"
    path.write_text(AGNEWS_LIKE, encoding="utf-8")
    corpus = load_corpus(path, text_fields="2,3", label_field="1")
    assert corpus.labels == (3, 4, 2)
    assert corpus.ids == ("0", "1", "2")
    assert (
        corpus.texts[0]
        == "Fears for T N pension Unions representing workers at Turner   Newall say"
    )
    assert "second\\team" in corpus.texts[1]  # the literal backslash is kept
    assert corpus.texts[2] == 'Quote "inside" line one\nline two of a quoted field'


def test_csv_header_by_name_and_auto_detection(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("label,title,text\n1,a,x\n2,b,y\n", encoding="utf-8")
    named = load_corpus(path)  # default names imply a header
    assert named.texts == ("x", "y") and named.labels == (1, 2)
    numbered = load_corpus(path, text_fields=["2", "3"], label_field="1")  # guessed: header
    assert numbered.texts == ("a x", "b y") and numbered.labels == (1, 2)
    forced = load_corpus(path, text_fields="3", label_field=None, header=False)
    assert forced.texts == ("text", "x", "y")


def test_csv_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("label,text\n1,x\n2\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"line 3 has 1 columns; column 2 \('text'\) is missing"):
        load_corpus(path)
    with pytest.raises(InputError, match=r"has no column 'body'; its columns are 'label', 'text'"):
        load_corpus(path, text_fields="body")
    with pytest.raises(InputError, match="given by name but the file is read without a header"):
        load_corpus(path, text_fields="text", header=False)
    path.write_text("label,text\n1,x\n,y\n", encoding="utf-8")
    with pytest.raises(InputError, match="line 3 has no label 'label'"):
        load_corpus(path)
    path.write_text("id,text\n7,x\n7,y\n", encoding="utf-8")
    with pytest.raises(InputError, match="duplicate id '7' at line 2 and line 3"):
        load_corpus(path)
    path.write_text("id,text\n7,x\n8,\n", encoding="utf-8")
    with pytest.raises(InputError, match="line 3 has empty document text"):
        load_corpus(path)
    path.write_text("text\n", encoding="utf-8")
    with pytest.raises(InputError, match="header row and no data rows"):
        load_corpus(path)


def test_tsv_and_explicit_delimiter(tmp_path: Path) -> None:
    tsv = tmp_path / "d.tsv"
    tsv.write_text("text\tlabel\nhello, world\tpos\n", encoding="utf-8")
    assert load_corpus(tsv).texts == ("hello, world",)
    semi = tmp_path / "d.csv"
    semi.write_text("text;label\nx;1\n", encoding="utf-8")
    assert load_corpus(semi, delimiter=";").labels == (1,)


def test_csv_long_field_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    long_text = "word " * 60_000  # beyond csv's default 128 KiB field limit
    path.write_bytes(("\ufefftext\n" + f'"{long_text}"\n').encode())
    assert load_corpus(path).texts == (long_text,)


# ---------------------------------------------------------------- Parquet


def test_parquet(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    table = pa.table({"id": [10, 11], "text": ["a", "b"], "label": ["x", "y"]})
    pq.write_table(table, path)
    corpus = load_corpus(path)
    assert corpus.ids == ("10", "11") and corpus.texts == ("a", "b") and corpus.labels == ("x", "y")
    assert load_corpus(path, text_fields="2", label_field=None, id_field=None).ids == ("0", "1")


def test_parquet_errors(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["a", None], "label": [1, 2]}), path)
    with pytest.raises(InputError, match="row 1 has no text field 'text'"):
        load_corpus(path)
    pq.write_table(pa.table({"text": [1, 2]}), path)
    with pytest.raises(InputError, match="row 0: text field 'text' holds int"):
        load_corpus(path)
    garbage = tmp_path / "g.parquet"
    garbage.write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match="not a readable Parquet file"):
        load_corpus(garbage)


# ---------------------------------------------------------------- Hugging Face datasets


def test_hf_dataset_saved_to_disk(tmp_path: Path) -> None:
    import datasets

    ds = datasets.Dataset.from_dict({"text": ["a", "b", "c"], "label": [0, 1, 0]})
    ds.save_to_disk(str(tmp_path / "single"))
    corpus = load_corpus(tmp_path / "single")
    assert corpus.texts == ("a", "b", "c") and corpus.labels == (0, 1, 0)
    datasets.DatasetDict({"train": ds, "test": ds.select([2])}).save_to_disk(str(tmp_path / "dd"))
    assert load_corpus(tmp_path / "dd", split="test").texts == ("c",)
    with pytest.raises(InputError, match="has splits test, train; choose one"):
        load_corpus(tmp_path / "dd")
    (tmp_path / "plain").mkdir()
    with pytest.raises(InputError, match="not a dataset saved with save_to_disk"):
        load_corpus(tmp_path / "plain")


def test_hf_hub_name_failure_is_dataset_not_found(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def missing(name: str, split: str | None = None) -> None:
        raise FileNotFoundError(f"Couldn't find dataset {name}")

    monkeypatch.setattr(datasets, "load_dataset", missing)
    with pytest.raises(DatasetNotFound, match="'no/such' not found"):
        load_corpus("hf:no/such", split="train")


# ---------------------------------------------------------------- helpers


def test_helpers() -> None:
    assert split_fields("2, 3") == ("2", "3")
    assert split_fields(["title", "body,x"]) == ("title", "body", "x")
    assert infer_format("hf:ag_news") == "hf"
    assert infer_format("x.NDJSON") == "jsonl"
    assert normalise_labels([1, "2", 3.0]) == (1, 2, 3)
    assert normalise_labels([1, "b"]) == ("1", "b")
    assert normalise_labels([True, False]) == ("True", "False")
