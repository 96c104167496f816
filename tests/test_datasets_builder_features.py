"""datasets_builder: cached item features (text, vision, id) and the synthetic image-dependent data set."""

import dataclasses
import json
import os
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import datasets_builder
from datasets_builder import (
    BuildConfig,
    SyntheticConfig,
    build_dataset,
    compute_item_features,
    generate_synthetic_dataset,
    load_built_dataset,
    load_item_features,
)
from datasets_builder.__main__ import main
from datasets_builder.synthetic import COLOR_FAMILIES, SHAPES, draw_item_image

TINY_SYNTHETIC = SyntheticConfig(  # session-shape: every one of the 30 items passes the build filter
    rule="session-shape",
    num_users=30, num_items=30, num_shapes=3, sessions_per_user=1, min_session_length=6, max_session_length=8,
    image_size=32, seed=1,
)
NO_ENCODERS = {"text_encoder": "none", "vision_encoder": "none", "id_encoder": "none"}


def _build(raw: Path, out: Path, drop_title_of: str | None = None, **overrides) -> Path:
    if drop_title_of is not None:  # an item with no metadata line: no text
        lines = (raw / "metadata.jsonl").read_text().splitlines()
        (raw / "metadata.jsonl").write_text("\n".join(l for l in lines if drop_title_of not in l) + "\n")
    config = BuildConfig(
        format="amazon2018", interactions=str(raw / "reviews.jsonl"), metadata=str(raw / "metadata.jsonl"),
        image_dir=str(raw / "images"), image_pattern="{item_id}.png",
        **{"min_item_interactions": 2, "min_sequence_length": 5, **overrides},
    )
    build_dataset(config, out)
    return out


@pytest.fixture
def ds_features_data(tmp_path):
    """A built tiny synthetic data set: one item without metadata, one missing image, one unreadable image."""
    raw = tmp_path / "raw"
    record = generate_synthetic_dataset(raw, TINY_SYNTHETIC)
    asins = [item["asin"] for item in record["items"]]
    (raw / "images" / f"{asins[1]}.png").unlink()
    (raw / "images" / f"{asins[2]}.png").write_bytes(b"\x89PNG broken")
    data = _build(raw, tmp_path / "data", drop_title_of=asins[0])
    return data, record


class FakeEncoder:
    """Counts loads and calls; texts/images -> [B, 4]."""

    loads = 0
    calls = 0
    fail_after = None

    def __init__(self, *args, **kwargs):
        type(self).loads += 1

    def __call__(self, batch):
        type(self).calls += 1
        if self.fail_after is not None and type(self).calls > self.fail_after:
            raise RuntimeError("simulated crash while encoding")
        return torch.ones(len(batch), 4) * type(self).calls


@pytest.fixture
def ds_fake_encoder(monkeypatch):
    FakeEncoder.loads = FakeEncoder.calls = 0
    FakeEncoder.fail_after = None
    monkeypatch.setattr(datasets_builder.features, "load_encoder", lambda *args, **kwargs: FakeEncoder())
    return FakeEncoder


# --- synthetic data set --------------------------------------------------------------------------------------


def test_synthetic_dataset_is_seeded_and_has_neutral_titles(tmp_path):
    first = generate_synthetic_dataset(tmp_path / "a", TINY_SYNTHETIC)
    second = generate_synthetic_dataset(tmp_path / "b", TINY_SYNTHETIC)
    assert first == second
    for name in ("reviews.jsonl", "metadata.jsonl", f"images/{first['items'][0]['asin']}.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    titles = " ".join(item["title"].lower() for item in first["items"])
    assert not any(word in titles for word in (*COLOR_FAMILIES, *SHAPES))
    mtime = (tmp_path / "a" / "reviews.jsonl").stat().st_mtime_ns
    generate_synthetic_dataset(tmp_path / "a", TINY_SYNTHETIC)  # same config: skipped
    assert (tmp_path / "a" / "reviews.jsonl").stat().st_mtime_ns == mtime


@pytest.mark.parametrize("rule", ["target-shape", "session-shape"])
def test_synthetic_dataset_plants_its_shape_rule(tmp_path, rule):
    record = generate_synthetic_dataset(tmp_path / "raw", dataclasses.replace(TINY_SYNTHETIC, rule=rule))
    data = _build(tmp_path / "raw", tmp_path / "data")
    sequences, items, stats = load_built_dataset(data)
    assert stats["sequences"] == 30 and all(items["has_image"])
    shape = {item["asin"]: item["shape"] for item in record["items"]}
    item_shape = [shape[item_id] for item_id in items["item_id"]]
    for row in sequences["train"]:
        history, target = {item_shape[i] for i in row["history"]}, item_shape[row["target"]]
        if rule == "session-shape":
            assert history == {target}
        else:
            assert target == SHAPES[0] and SHAPES[0] not in history
    # colour is noise: sessions span several colours
    color = [dict((item["asin"], item["color"]) for item in record["items"])[item_id] for item_id in items["item_id"]]
    assert any(len({color[i] for i in row["history"]}) > 1 for row in sequences["train"])


def test_every_shape_is_drawn_differently():
    pictures = {shape: np.asarray(draw_item_image((200, 30, 30), shape, 48, np.random.default_rng(0)))
                for shape in SHAPES}
    drawn = {shape: int((picture[..., 1] < 150).sum()) for shape, picture in pictures.items()}  # pixels in red
    assert all(count > 48 for count in drawn.values()), drawn
    assert len({picture.tobytes() for picture in pictures.values()}) == len(SHAPES)


def test_synthetic_cli_validates_sizes(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["synthetic", "--out", str(tmp_path), "--rule", "session-shape", "--num-items", "20", "--num-shapes", "6"])
    assert "fewer than --max-session-length" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["synthetic", "--out", str(tmp_path), "--rule", "colour"])
    assert "--rule must be one of ['target-shape', 'session-shape']" in capsys.readouterr().err


def test_synthetic_refuses_a_folder_whose_images_it_did_not_draw(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "holiday.png").write_bytes(b"the user's photo")
    assert main(["synthetic", "--out", str(tmp_path), "--num-users", "30", "--num-items", "30"]) == 2
    assert str(tmp_path / "images") in capsys.readouterr().err
    assert [p.name for p in tmp_path.rglob("*")] == ["images", "holiday.png"]
    assert (tmp_path / "images" / "holiday.png").read_bytes() == b"the user's photo"


# --- caching, resuming, atomic writes ------------------------------------------------------------------------


def test_second_feature_run_does_not_call_the_encoder(ds_features_data, ds_fake_encoder, tmp_path):
    data, _ = ds_features_data
    folder = tmp_path / "my-sentence-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    kwargs = {**NO_ENCODERS, "text_encoder": str(folder), "batch_size": 8}
    report = compute_item_features(data, **kwargs)
    assert report["text"].startswith("computed") and ds_fake_encoder.loads == 1
    features, present = load_item_features(data, ("text",))["text"]
    _, items, _ = load_built_dataset(data)
    assert features.shape == (len(items), 4) and present.tolist() == items["has_text"] and not present.all()
    assert (features[~present] == 0).all()
    manifest = json.loads((data / "features" / "text.json").read_text())
    assert manifest["key"]["encoder"] == str(folder) and manifest["dim"] == 4
    assert manifest["counts"] == {"missing_text": 1}

    assert compute_item_features(data, **kwargs)["text"].startswith("reused") and ds_fake_encoder.loads == 1
    (folder / "config.json").write_text('{"changed": true}')  # a changed encoder recomputes
    assert compute_item_features(data, **kwargs)["text"].startswith("computed") and ds_fake_encoder.loads == 2
    assert compute_item_features(data, **kwargs, force=True)["text"].startswith("computed")
    assert ds_fake_encoder.loads == 3


def test_crash_while_encoding_leaves_no_feature_file(ds_features_data, ds_fake_encoder, tmp_path):
    data, _ = ds_features_data
    folder = tmp_path / "st"
    folder.mkdir()
    ds_fake_encoder.fail_after = 1
    with pytest.raises(RuntimeError, match="simulated crash"):
        compute_item_features(data, **{**NO_ENCODERS, "text_encoder": str(folder), "batch_size": 4})
    features_dir = data / "features"
    assert not features_dir.exists() or list(features_dir.iterdir()) == []


def test_load_item_features_names_the_missing_file_and_command(ds_features_data):
    data, _ = ds_features_data
    with pytest.raises(FileNotFoundError, match=r"vision\.safetensors not found.*python -m datasets_builder features"):
        load_item_features(data, ("vision",))
    with pytest.raises(ValueError, match="Unknown modality"):
        load_item_features(data, ("audio",))


def test_unknown_encoder_specs_are_clear_errors(ds_features_data, capsys):
    data, _ = ds_features_data
    with pytest.raises(ValueError, match="--vision-encoder 'resnet50': use 'efficientnet-lite0'"):
        compute_item_features(data, **{**NO_ENCODERS, "vision_encoder": "resnet50"})
    assert main(["features", str(data), "--text-encoder", "backbone:no/such", "--vision-encoder", "none",
                 "--id-encoder", "none"]) == 2
    assert "--text-encoder: no/such is neither a local path nor a Hub model" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="--vision-encoder 'blip2:/no/folder': /no/folder does not exist"):
        compute_item_features(data, **{**NO_ENCODERS, "vision_encoder": "blip2:/no/folder"})


def test_feature_files_get_normal_permissions(ds_features_data, ds_fake_encoder, tmp_path):
    data, _ = ds_features_data
    (tmp_path / "st").mkdir()
    umask = os.umask(0o022)
    try:
        compute_item_features(data, **{**NO_ENCODERS, "text_encoder": str(tmp_path / "st")})
    finally:
        os.umask(umask)
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in (data / "features").iterdir()} == {
        "text.safetensors": "0o644", "text.json": "0o644"}


def test_non_finite_features_are_refused_on_write_and_on_load(ds_features_data, ds_fake_encoder, tmp_path):
    data, _ = ds_features_data
    (tmp_path / "st").mkdir()
    kwargs = {**NO_ENCODERS, "text_encoder": str(tmp_path / "st"), "batch_size": 8}

    def nan_rows(self, batch):
        out = torch.ones(len(batch), 4)
        out[:2, 1] = float("nan")
        out[2, 0] = float("inf")
        return out

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ds_fake_encoder, "__call__", nan_rows)
        with pytest.raises(ValueError, match=r"text features: 12 of 30 rows hold NaN or infinite values"):
            compute_item_features(data, **kwargs)  # 4 batches of 8, 3 bad rows in each (29 items with a title)
    assert not (data / "features" / "text.safetensors").exists()

    compute_item_features(data, **kwargs)
    path = data / "features" / "text.safetensors"
    tensors = load_file(str(path))
    tensors["features"][5, 2] = float("nan")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    save_file(tensors, str(path), metadata=metadata)  # corrupted after the fact
    message = r"text\.safetensors holds NaN or infinite values in 1 of 30 rows \(item_index \[5\]\): recompute it"
    with pytest.raises(ValueError, match=message + r" with `python -m datasets_builder features .* --force`"):
        load_item_features(data, ("text",))


def test_encoder_none_removes_features_computed_from_other_data(ds_features_data, ds_fake_encoder, monkeypatch,
                                                                tmp_path, capsys):
    """A rebuild with other filters, then `features --id-encoder none` (etc.): the old files are gone, not read."""
    data, record = ds_features_data
    (tmp_path / "st").mkdir()
    _, items, _ = load_built_dataset(data)

    def train_baseline(name, data_dir, seed, **overrides):
        return types.SimpleNamespace(item_embeddings=torch.ones(len(items), 3), test_metrics={})

    monkeypatch.setattr(datasets_builder.features, "baselines", types.SimpleNamespace(train_baseline=train_baseline))
    compute_item_features(data, **{**NO_ENCODERS, "text_encoder": str(tmp_path / "st"), "id_encoder": "sasrec"})
    none = ["features", str(data), "--text-encoder", "none", "--vision-encoder", "none", "--id-encoder", "none"]
    assert main(none) == 0  # computed from this very data: kept
    assert "kept" in capsys.readouterr().out and (data / "features" / "id.safetensors").is_file()

    _build(tmp_path / "raw", data, drop_title_of=record["items"][3]["asin"], seed=7)  # other texts and splits
    assert main(none) == 0
    out = capsys.readouterr().out
    assert "text: not computed (encoder none); removed the stale" in out and "id: not computed" in out
    assert sorted(p.name for p in (data / "features").iterdir()) == []
    with pytest.raises(FileNotFoundError, match="id.safetensors not found"):
        load_item_features(data, ("id",))


# --- ID features through the baselines package ---------------------------------------------------------------


def test_id_features_from_baselines_sasrec(ds_features_data, monkeypatch):
    data, _ = ds_features_data
    _, items, _ = load_built_dataset(data)
    calls = []

    def train_baseline(name, data_dir, seed, **overrides):
        calls.append((name, data_dir, seed, overrides))
        embeddings = torch.arange(len(items) * 3, dtype=torch.float32).view(len(items), 3)
        return types.SimpleNamespace(item_embeddings=embeddings, test_metrics={"hr@1": 0.5})

    fake = types.SimpleNamespace(train_baseline=train_baseline, __version__="t")
    monkeypatch.setattr(datasets_builder.features, "baselines", fake)
    kwargs = {**NO_ENCODERS, "id_encoder": "sasrec", "seed": 3, "id_encoder_kwargs": {"epochs": 2}}
    assert compute_item_features(data, **kwargs)["id"].startswith("computed")
    assert calls == [("sasrec", str(data), 3, {"epochs": 2})]
    features, present = load_item_features(data, ("id",))["id"]
    assert features[1, 0] == 3.0
    sequences, _, _ = load_built_dataset(data)
    seen = {i for row in sequences["train"] for i in row["history"] + [row["target"]]}
    assert present.all()  # every item has its SASRec row, as in LLaRA; the rows never trained are counted
    assert json.loads((data / "features" / "id.json").read_text())["counts"]["not_in_train"] == len(items) - len(seen)
    assert json.loads((data / "features" / "id.json").read_text())["counts"]["test_metrics"] == {"hr@1": 0.5}
    assert compute_item_features(data, **kwargs)["id"].startswith("reused") and len(calls) == 1
    compute_item_features(data, **{**kwargs, "seed": 4})
    assert len(calls) == 2


# --- real encoders -------------------------------------------------------------------------------------------


def test_real_efficientnet_marks_missing_and_unreadable_images_absent(ds_features_data):
    data, record = ds_features_data
    report = compute_item_features(data, **{**NO_ENCODERS, "vision_encoder": "efficientnet-lite0"}, image_size=96)
    assert report["vision"].startswith("computed")
    features, present = load_item_features(data, ("vision",))["vision"]
    _, items, _ = load_built_dataset(data)
    absent = {items["item_id"][i] for i in (~present).nonzero().flatten().tolist()}
    assert absent == {record["items"][1]["asin"], record["items"][2]["asin"]} and features.shape[1] == 1280
    manifest = json.loads((data / "features" / "vision.json").read_text())
    assert manifest["counts"] == {"missing_image": 1, "unreadable_image": 1}
    # the pretrained features see the planted property: items of one shape are closer than items of two
    shape = {item["asin"]: item["shape"] for item in record["items"]}
    shapes = np.array([shape[item_id] for item_id in items["item_id"]])[present.numpy()]
    x = torch.nn.functional.normalize(features[present] - features[present].mean(0), dim=1)
    similarity = (x @ x.T).numpy()
    same = shapes[:, None] == shapes[None, :]
    np.fill_diagonal(same, False)
    different = shapes[:, None] != shapes[None, :]
    assert similarity[same].mean() > similarity[different].mean() + 0.3


def test_real_minilm_text_features_and_reuse(ds_features_data, monkeypatch):
    data, _ = ds_features_data
    assert compute_item_features(data, **{**NO_ENCODERS, "text_encoder": "all-MiniLM-L6-v2"})["text"].startswith(
        "computed")
    features, present = load_item_features(data, ("text",))["text"]
    assert features.shape[1] == 384 and torch.allclose(features[present].norm(dim=1), torch.ones(int(present.sum())))

    def no_load(*args, **kwargs):
        raise AssertionError("the encoder was loaded again")

    monkeypatch.setattr(datasets_builder.features, "load_encoder", no_load)
    assert compute_item_features(data, **{**NO_ENCODERS, "text_encoder": "all-MiniLM-L6-v2"})["text"].startswith(
        "reused")


def _tiny_llama(folder: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = sorted({w for line in ["<pad>", "<unk>", "Smart Mug Compact Lamp Premium Vase Travel Clock"]
                    for w in line.split()} | {f"{n:04d}" for n in range(10_000)})
    tokenizer = Tokenizer(models.WordLevel({w: k for k, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, pad_token_id=fast.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def test_backbone_text_encoder_mean_pools_over_non_pad_tokens(tmp_path):
    from datasets_builder.features import BackboneTextEncoder

    encoder = BackboneTextEncoder(str(_tiny_llama(tmp_path / "llm")), device="cpu", max_length=32)
    texts = ["Smart Mug 0001", "Compact Lamp Premium Vase Travel Clock 0042"]
    batched = encoder(texts)
    alone = torch.cat([encoder([text]) for text in texts])
    assert batched.shape == (2, 16) and torch.allclose(batched, alone, atol=1e-5)


def test_timm_without_local_weights_errors_clearly_and_with_a_weights_file_works(ds_features_data, tmp_path):
    import timm
    from safetensors.torch import save_file

    data, _ = ds_features_data
    with pytest.raises(FileNotFoundError, match="not available locally.*timm:test_resnet:/path/to"):
        compute_item_features(data, **{**NO_ENCODERS, "vision_encoder": "timm:test_resnet"})
    weights = tmp_path / "test_resnet.safetensors"
    save_file(timm.create_model("test_resnet", pretrained=False).state_dict(), str(weights))
    report = compute_item_features(data, **{**NO_ENCODERS, "vision_encoder": f"timm:test_resnet:{weights}"})
    assert report["vision"].endswith("[30, 96]")


def test_blip2_vision_encoder_pooled_output(ds_features_data, tmp_path):
    from transformers import Blip2Config, Blip2ForConditionalGeneration

    data, _ = ds_features_data
    config = Blip2Config(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        qformer_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                        "encoder_hidden_size": 32, "vocab_size": 100},
        text_config={"model_type": "opt", "hidden_size": 32, "ffn_dim": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "vocab_size": 100, "word_embed_proj_dim": 32},
        num_query_tokens=4,
    )
    Blip2ForConditionalGeneration(config).save_pretrained(tmp_path / "blip2")
    report = compute_item_features(data, **{**NO_ENCODERS, "vision_encoder": f"blip2:{tmp_path / 'blip2'}"})
    assert report["vision"].endswith("[30, 32]")
    assert int(load_item_features(data, ("vision",))["vision"][1].sum()) == 28


def test_id_features_with_the_real_sasrec(ds_features_data):
    pytest.importorskip("baselines")
    data, _ = ds_features_data
    kwargs = {**NO_ENCODERS, "id_encoder": "sasrec", "id_encoder_kwargs": {"epochs": 1, "hidden_size": 8}}
    assert compute_item_features(data, **kwargs)["id"].endswith("[30, 8]")
    assert (data / "baselines" / "sasrec.json").is_file()
    assert compute_item_features(data, **kwargs)["id"].startswith("reused")
