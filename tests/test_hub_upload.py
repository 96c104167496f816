"""hub_upload: the export loads alone and ranks like the trained model; card, dry run, push guards, cold start."""

import json
import logging
import os
import re
import shutil
import socket
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from speeder_fixtures import run_isolated, write_planted_dataset

from datasets_builder.build import load_built_dataset
from hub_upload import __main__ as cli
from hub_upload import card, upload
from hub_upload.export import read_run
from modeling_speeder import SpeederForSequentialRec, SpeederProcessor
from trainer.training_data import load_features
from trainer.model_building import build_model
from trainer.run import main as train

REPO_ID = "speeder-tests/planted"
DATASET_ID = "speeder-tests/planted-data"
BENCHMARK = {  # the shape of bench/efficiency.py's efficiency.json, abridged
    "benchmark": "speeder-efficiency",
    "machine": {"cpu_cores": 2, "device": "cpu", "load_average_end": [1.0, 1.0, 1.0]},
    "rows": [{"method": "speeder", "n": 10, "infer_s_per_sample": 0.0035}],
    "table": "| method | n | ms / sample |\n| --- | --- | --- |\n| speeder | 10 | 3.5 |\n",
    "notes": ["Medians of 5 runs."],
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run of stages 1 and 3 (stage 3 starts from stage 1's adapter) on the planted data set."""
    root = tmp_path_factory.mktemp("hub")
    data_dir = write_planted_dataset(root / "data")
    train(["--data_dir", str(data_dir), "--output_dir", str(root / "run"), "--stages", "1,3",
           "--fusion_hidden_size", "32", "--fusion_intermediate_size", "64", "--max_history", "8",
           "--num_train_epochs", "1", "--max_train_samples", "24", "--ppt_per_sequence", "0.5",
           "--per_device_train_batch_size", "8", "--learning_rate", "5e-3", "--report_to", "none", "--bf16", "false",
           "--save_strategy", "no", "--eval_strategy", "no", "--eval_generate", "false", "--max_eval_samples", "8"])
    return root / "run"


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory) -> Path:
    benchmark = tmp_path_factory.mktemp("bench") / "efficiency.json"
    benchmark.write_text(json.dumps(BENCHMARK))
    out = run_dir.parent / "export"
    assert cli.main(["export", str(run_dir), "--out", str(out), "--dataset-id", DATASET_ID,
                     "--base-model", "speeder-tests/tiny-llama", "--benchmark", str(benchmark)]) == 0
    return out


def trained_model(run_dir: Path, stage: int):
    """The run's PEFT model of `stage`, rebuilt in the repository, with its collator and data."""
    run = read_run(run_dir, stage)
    args = run.arguments()
    features = load_features(args.data_dir, args)
    model, tokenizer = build_model(args, features, run.config["seed"], run.adapter_dir)
    speeder = model.get_base_model().eval()
    collator = SpeederProcessor.from_model_config(speeder.config, tokenizer).with_items(
        features, run.stage_metrics["modalities"], with_answer=False)
    sequences, items, _ = load_built_dataset(args.data_dir)
    return model.eval(), collator, sequences, items


def expected_rankings(run_dir: Path, stage: int) -> list[dict]:
    """Per test sample: history and candidate ids, and the trained model's own ranking from `score_candidates`."""
    model, collator, sequences, items = trained_model(run_dir, stage)
    rows = list(sequences["test"])
    scores = model.get_base_model().score_candidates(**collator(rows)).tolist()
    item_id = items["item_id"]
    samples = []
    for row, row_scores in zip(rows, scores):
        order = sorted(range(len(row_scores)), key=lambda i: -row_scores[i])
        samples.append({"history": [item_id[i] for i in row["history"]],
                        "candidates": [item_id[i] for i in row["candidates"]],
                        "ranking": [item_id[row["candidates"][i]] for i in order],
                        "scores": [row_scores[i] for i in order]})
    return samples


def card_parts(folder: Path) -> tuple[dict, str]:
    text = (folder / "README.md").read_text()
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


def test_export_writes_a_self_sufficient_folder(exported, run_dir):
    names = {p.relative_to(exported).as_posix() for p in exported.rglob("*") if p.is_file()}
    assert {"config.json", "model.safetensors", "generation_config.json", "configuration_speeder.py",
            "modeling_speeder.py", "prompt_speeder.py", "tokenizer.json", "tokenizer_config.json",
            "item_embeddings.safetensors", "item_table.jsonl", "README.md", "speeder_export.json",
            "training_curves/stage1.png", "training_curves/stage3.png"} <= names
    assert not any("adapter" in name for name in names)
    config = json.loads((exported / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_speeder.SpeederForSequentialRec"
    embeddings = load_file(str(exported / "item_embeddings.safetensors"))["item_embeddings"]
    table = [json.loads(line) for line in (exported / "item_table.jsonl").read_text().splitlines()]
    assert embeddings.shape == (24, config["text_config"]["hidden_size"]) and len(table) == 24
    assert table[3] == {"item_id": "item3", "title": "item 3"}
    assert [p.name for p in exported.parent.iterdir() if p.name.startswith(".")] == []  # no temp folder left


def test_exported_folder_ranks_exactly_like_the_trained_model_in_a_fresh_process(exported, run_dir, tmp_path):
    samples = expected_rankings(run_dir, stage=3)
    (tmp_path / "samples.json").write_text(json.dumps(samples))
    output = run_isolated(f"""
        import json
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(exported)!r}, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        calls = []
        model.model.language_model.register_forward_hook(lambda *args: calls.append(1))
        results = []
        for sample in json.load(open({str(tmp_path / 'samples.json')!r})):
            before = len(calls)
            results.append(model.recommend(sample["history"], sample["candidates"]))
            assert len(calls) - before == 1, "recommend must run one forward pass"
        print(json.dumps(results))
    """)
    results = json.loads(output.strip().splitlines()[-1])
    assert len(results) == len(samples) == 12
    for sample, ranked in zip(samples, results):
        assert [item for item, _ in ranked] == sample["ranking"]
        assert [score for _, score in ranked] == pytest.approx(sample["scores"], abs=1e-4)


def test_card_metadata_parses_and_carries_the_run_numbers(exported, run_dir):
    metadata, body = card_parts(exported)
    results = json.loads((run_dir / "results.json").read_text())
    assert metadata["library_name"] == "transformers" and metadata["license"] == "apache-2.0"
    assert "sequential-recommendation" in metadata["tags"]
    assert metadata["base_model"] == "speeder-tests/tiny-llama" and metadata["datasets"] == [DATASET_ID]
    [entry] = metadata["model-index"][0]["results"]
    assert entry["dataset"] == {"name": DATASET_ID, "type": DATASET_ID, "split": "test"}
    reported = {metric["name"]: metric["value"] for metric in entry["metrics"]}
    assert reported == {name: round(results["test"][key], 4) for key, name in
                        [("hr@1", "HR@1"), ("valid_ratio", "ValidRatio"), ("vhr@1", "VHR@1"), ("ndcg@5", "NDCG@5")]}
    assert f"| {results['test']['ndcg@5']:.4f} |" in body
    stage_rows = [line for line in body.splitlines() if re.match(r"\| [13] \| text", line)]
    assert [row.split(" | ")[4] for row in stage_rows] == [f"{results['stages'][s]['valid']['hr@1']:.4f}"
                                                          for s in ("1", "3")]
    assert "| speeder | 10 | 3.5 |" in body and "- machine: cpu_cores 2, device cpu\n" in body  # the benchmark
    assert "- Medians of 5 runs." in body
    assert "arXiv:2511.05885" in body and "max_eval_samples" in body


def test_benchmark_rows_without_a_table_render_as_a_table():
    section = card._efficiency({"rows": [{"method": "speeder", "n": 10}, {"method": "llara", "n": 10, "ratio": 4.5}]})
    assert "| method | n | ratio |" in section and "| llara | 10 | 4.5000 |" in section


def test_card_usage_snippet_runs_against_the_exported_folder(exported):
    _, body = card_parts(exported)
    code = "\n".join(re.findall(r"```python\n(.*?)```", body, re.S))
    assert "recommend(" in code and "add_items(" in code and str(exported) in code
    output = run_isolated(code)
    top3, with_new_item = [eval(line) for line in output.strip().splitlines()[-2:]]
    assert len(top3) == 3 and len(with_new_item) == 5 and "new-item" in dict(with_new_item)


def test_cold_start_item_from_add_items_is_scored_and_saved(exported, run_dir, tmp_path):
    model = SpeederForSequentialRec.from_pretrained(exported)
    features = load_features(str(run_dir.parent / "data"), read_run(run_dir).arguments())
    copy_of_item5 = {f"{m}_features": features.features[m][[5]] for m in ("text", "vision", "id")}
    new_embedding = model.add_items(["item5-copy"], titles=["a new item like item 5"], **copy_of_item5)
    cache = model.item_cache
    assert torch.allclose(new_embedding[0], cache.embeddings[cache.rows["item5"]], atol=1e-5)
    history, others = ["item1", "item2", "item3"], ["item9", "item12", "item20", "item22"]
    as_new = dict(model.recommend(history, ["item5-copy"] + others))
    as_known = dict(model.recommend(history, ["item5"] + others))
    assert as_new["item5-copy"] == pytest.approx(as_known["item5"], abs=1e-5)
    model.save_pretrained(tmp_path / "grown")
    reloaded = SpeederForSequentialRec.from_pretrained(tmp_path / "grown")
    assert len(reloaded.item_cache) == 25 and reloaded.item_cache.titles[-1] == "a new item like item 5"
    assert dict(reloaded.recommend(history, ["item5-copy"] + others)) == pytest.approx(as_new)  # tokenizer saved too


def test_recommend_rejects_bad_requests_and_keeps_the_most_recent_history(exported, caplog):
    model = SpeederForSequentialRec.from_pretrained(exported)
    candidates = ["item1", "item2", "item3"]
    with pytest.raises(ValueError, match=r"Unknown item ids \['nope', 'gone'\]"):
        model.recommend(["item0", "nope"], ["gone", "item1"])
    with pytest.raises(ValueError, match=r"repeats \['item2'\]"):
        model.recommend(["item0"], ["item2", "item1", "item2"])
    with pytest.raises(ValueError, match="history_item_ids is empty"):
        model.recommend([], candidates)
    with pytest.raises(ValueError, match="at most 5"):
        model.recommend(["item0"], [f"item{i}" for i in range(1, 7)])
    with pytest.raises(ValueError, match="list of item ids"):
        model.recommend("item0", candidates)
    with pytest.raises(ValueError, match="already in the item cache"):
        model.add_items(["item3"], text_features=torch.zeros(1, model.config.text_feature_size))
    with pytest.raises(ValueError, match=r"text_features has shape \(1, 3\)"):
        model.add_items(["new"], text_features=torch.zeros(1, 3))
    long_history = [f"item{i}" for i in range(4, 16)]  # 12 items, the position table has 8 rows
    with caplog.at_level(logging.WARNING):
        truncated = model.recommend(long_history, candidates)
        model.recommend(long_history, candidates)
    assert truncated == model.recommend(long_history[-8:], candidates)
    assert sum("most recent" in record.message for record in caplog.records) == 1
    assert len(model.recommend(long_history, candidates, top_k=2)) == 2


def test_stage_export_as_adapter_only_reproduces_that_stage(run_dir, tmp_path):
    out = tmp_path / "stage1-adapter"
    assert cli.main(["export", str(run_dir), "--out", str(out), "--stage", "1", "--adapter-only"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "speeder_base.json", "item_embeddings.safetensors",
            "item_table.jsonl", "tokenizer.json", "README.md"} <= names
    assert "model.safetensors" not in names and "config.json" not in names
    metadata, body = card_parts(out)
    stage1 = json.loads((run_dir / "stage1" / "stage_metrics.json").read_text())["valid"]
    assert metadata["library_name"] == "peft"
    assert metadata["model-index"][0]["results"][0]["dataset"]["split"] == "validation"
    assert {m["name"]: m["value"] for m in metadata["model-index"][0]["results"][0]["metrics"]}["HR@1"] == round(
        stage1["hr@1"], 4)
    assert not re.search(r"^\| 3 \|", body, re.M)  # only the exported stage's figures
    namespace = {"results": []}
    exec("\n".join(re.findall(r"```python\n(.*?)```", body, re.S)).replace("print(", "results.append("), namespace)
    expected = next(s for s in expected_rankings(run_dir, stage=1)
                    if s["history"] == namespace["history"] and s["candidates"] == namespace["candidates"])
    top3 = namespace["results"][0]
    assert [item for item, _ in top3] == expected["ranking"][:3]
    assert [score for _, score in top3] == pytest.approx(expected["scores"][:3], abs=1e-5)


def test_export_refuses_missing_and_unfinished_runs(run_dir, exported, tmp_path, capsys):
    assert cli.main(["export", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert cli.main(["export", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "not a Speeder training run" in capsys.readouterr().err
    unfinished = tmp_path / "unfinished"
    (unfinished / "stage1").mkdir(parents=True)
    (unfinished / "run_config.json").write_text((run_dir / "run_config.json").read_text())
    (unfinished / "stage1" / "stage_metrics.json").write_text("{}")
    assert cli.main(["export", str(unfinished), "--out", str(tmp_path / "x")]) == 2
    assert "unfinished" in capsys.readouterr().err
    assert cli.main(["export", str(run_dir), "--out", str(tmp_path / "x"), "--stage", "2"]) == 2
    assert "Stage 2" in (err := capsys.readouterr().err) and "[1, 3]" in err
    assert cli.main(["export", str(run_dir), "--out", str(exported)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_export_never_writes_over_the_run_or_its_data(run_dir, tmp_path, capsys):
    """`--out` at, inside or above the run or data folder, with --overwrite: refused naming both; nothing lost."""
    run, data = tmp_path / "run", tmp_path / "data"
    shutil.copytree(run_dir, run)
    shutil.copytree(run_dir.parent / "data", data)
    before = _tree(tmp_path)
    for out, relation, source in [(run, "is the run folder", run), (run / "stage1", "is inside the run folder", run),
                                  (tmp_path, "contains the run folder", run), (data, "is the data folder", data),
                                  (data / "features", "is inside the data folder", data)]:
        assert cli.main(["export", str(run), "--out", str(out), "--data-dir", str(data), "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert f"--out {out} {relation} {source}" in err and len(err.strip().splitlines()) == 1, err
    assert _tree(tmp_path) == before


def test_overwrite_replaces_an_earlier_export_only(run_dir, tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    for flags in ([], ["--overwrite"]):
        assert cli.main(["export", str(run_dir), "--out", str(foreign), "--adapter-only", *flags]) == 2
        assert str(foreign) in capsys.readouterr().err
    assert _tree(foreign) == {"thesis.tex": b"years of work"}

    out = tmp_path / "export"
    assert cli.main(["export", str(run_dir), "--out", str(out), "--adapter-only"]) == 0
    (out / "stale.txt").write_text("from before")
    assert cli.main(["export", str(run_dir), "--out", str(out), "--adapter-only", "--overwrite"]) == 0
    assert not (out / "stale.txt").exists() and (out / "adapter_model.safetensors").is_file()


def test_exported_files_get_the_modes_of_a_plain_write(run_dir, tmp_path):
    umask = os.umask(0o027)
    try:
        assert cli.main(["export", str(run_dir), "--out", str(tmp_path / "merged")]) == 0
        assert cli.main(["export", str(run_dir), "--out", str(tmp_path / "adapter"), "--adapter-only"]) == 0
    finally:
        os.umask(umask)
    for folder in (tmp_path / "merged", tmp_path / "adapter"):
        modes = {p.relative_to(tmp_path).as_posix(): oct(p.stat().st_mode & 0o777) for p in folder.rglob("*")}
        assert {name for name in modes if name.endswith(".safetensors")}
        expected = {name: "0o750" if (tmp_path / name).is_dir() else "0o640" for name in modes}
        assert modes == expected and oct(folder.stat().st_mode & 0o777) == "0o750"


@pytest.fixture
def no_network(monkeypatch):
    """Fails the test on any HfApi use or socket connection."""

    class NoHfApi:
        def __init__(self, *args, **kwargs):
            raise AssertionError("HfApi was used")

    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(upload, "HfApi", NoHfApi)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_dry_run_lists_the_files_and_sends_nothing(exported, no_network, capsys):
    readme = (exported / "README.md").read_text()
    assert cli.main(["push", str(exported), "--repo-id", REPO_ID, "--dry-run"]) == 0
    listing = capsys.readouterr().out
    for path in exported.rglob("*"):
        if path.is_file():
            assert f"  {path.relative_to(exported).as_posix()}\n" in listing
    assert REPO_ID in listing and "model.safetensors" in listing and " KB" in listing
    assert (exported / "README.md").read_text() == readme  # the staged copy was retargeted, not the folder


@pytest.mark.parametrize("token, offline, message", [(None, False, "no Hugging Face token"),
                                                     ("hf_not_a_real_token_42", True, "offline")])
def test_push_without_token_or_network_fails_before_sending(exported, no_network, monkeypatch, tmp_path, capsys,
                                                            token, offline, message):
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(upload.constants, "HF_TOKEN_PATH", str(tmp_path / "no-stored-token"))
    monkeypatch.setattr(upload.constants, "HF_HUB_OFFLINE", offline)
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    assert cli.main(["push", str(exported), "--repo-id", REPO_ID]) == 2
    output = capsys.readouterr()
    assert message in output.err and "nothing was sent" in output.err
    assert "hf_not_a_real_token_42" not in output.out + output.err


def test_push_creates_the_repo_and_uploads_the_folder(exported, monkeypatch, capsys):
    calls = []

    class RecordingHfApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def create_branch(self, repo_id, **kwargs):
            calls.append(("create_branch", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            files = sorted(p.name for p in Path(kwargs["folder_path"]).iterdir())
            calls.append(("upload_folder", kwargs, files, (Path(kwargs["folder_path"]) / "README.md").read_text()))
            return type("Commit", (), {"commit_url": f"https://huggingface.co/{kwargs['repo_id']}/commit/1"})()

    monkeypatch.setattr(upload, "HfApi", RecordingHfApi)
    monkeypatch.setattr(upload.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token_42")
    assert cli.main(["push", str(exported), "--repo-id", REPO_ID, "--private", "--revision", "v1"]) == 0
    assert [c[0] for c in calls] == ["init", "create_repo", "create_branch", "upload_folder"]
    assert calls[0][1] == "hf_not_a_real_token_42" and calls[1][2]["private"] is True
    _, sent, files, readme = calls[3]
    assert sent["revision"] == "v1" and sent["commit_message"] == "Upload Speeder run run, stage 3 (merged)"
    assert "model.safetensors" in files and "item_embeddings.safetensors" in files
    assert f'AutoModel.from_pretrained("{REPO_ID}"' in readme and str(exported) not in readme
    assert "hf_not_a_real_token_42" not in "".join(capsys.readouterr())
