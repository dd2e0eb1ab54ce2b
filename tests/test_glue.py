from __future__ import annotations

import json
from pathlib import Path

import pytest

from butterfly.data import DataError
from butterfly.data.glue import load_glue


def test_rte_style_tsv_with_string_labels(tmp_path: Path) -> None:
    d = tmp_path / "RTE"
    d.mkdir()
    head = "index\tsentence1\tsentence2\tlabel\n"
    (d / "train.tsv").write_text(head + "0\tA cat sat.\tA cat is sitting.\tentailment\n"
                                 "1\tIt rains.\tIt is sunny.\tnot_entailment\n")  # fmt: skip
    (d / "dev.tsv").write_text(head + "0\tX is y.\tY is x.\tnot_entailment\n")
    ds = load_glue(d)
    assert ds.name == "RTE" and ds.label_names == ["entailment", "not_entailment"]
    assert ds.train.text_a == ["A cat sat.", "It rains."] and ds.train.text_b[1] == "It is sunny."
    assert ds.train.labels == [0, 1] and ds.test.labels == [1] and ds.n_classes == 2


def test_sst2_cola_and_jsonl(tmp_path: Path) -> None:
    sst = tmp_path / "SST-2"
    sst.mkdir()
    (sst / "train.tsv").write_text("sentence\tlabel\ngreat film \t1\nawful \t0\n")
    (sst / "dev.tsv").write_text("sentence\tlabel\nfine \t1\n")
    s = load_glue(sst)
    assert s.train.text_b is None and s.train.labels == [1, 0] and s.label_names == ["0", "1"]
    cola = tmp_path / "CoLA"
    cola.mkdir()
    (cola / "train.tsv").write_text("gj04\t1\t\tThe dog barked.\ngj04\t0\t*\tDog the barked.\n")
    (cola / "dev.tsv").write_text("gj04\t1\t\tIt works.\n")
    c = load_glue(cola)
    assert c.train.text_a == ["The dog barked.", "Dog the barked."] and c.train.labels == [1, 0]
    q = tmp_path / "qnli"
    q.mkdir()
    rows = [{"question": "Who?", "sentence": "Him.", "label": "entailment"},
            {"question": "Why?", "sentence": "No.", "label": "not_entailment"}]  # fmt: skip
    (q / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (q / "validation.jsonl").write_text(json.dumps(rows[0]))
    j = load_glue(q)
    assert j.train.text_a == ["Who?", "Why?"] and j.test.labels == [0]


def test_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_glue(tmp_path / "nope")
    d = tmp_path / "bad"
    d.mkdir()
    (d / "train.tsv").write_text("foo\tbar\n1\t2\n")
    (d / "dev.tsv").write_text("foo\tbar\n1\t2\n")
    with pytest.raises(DataError, match="no GLUE text and label columns"):
        load_glue(d)
    (d / "train.tsv").write_text("sentence\tlabel\nok\t1\nno\t0\n")
    (d / "dev.tsv").write_text("sentence\tlabel\nhm\t7\n")
    with pytest.raises(DataError, match="label '7' is not one of"):
        load_glue(d)
