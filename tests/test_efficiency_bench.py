"""bench/efficiency.py on the tiny backbone: the command runs, the JSON and PNG appear, token counts are exact, the
ratios and bounds follow from the measured rows, and the profile and per-step item encoding are recorded.

No timing assertions: these machines are noisy; the targets are read from the JSON of a real run.
"""

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

from modeling_speeder import LlaraPromptBuilder, TmfPromptBuilder
from modeling_speeder.backbones import build_speeder_model

# bench/ is a folder of scripts, not an installed package: load the module from its path (works with any runner).
_spec = importlib.util.spec_from_file_location(
    "bench_efficiency", Path(__file__).resolve().parents[1] / "bench" / "efficiency.py")
efficiency = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(efficiency)
load_movielens, main = efficiency.load_movielens, efficiency.main

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

ROW_KEYS = {
    "method", "titles", "n", "m", "prompt_tokens", "tokens_per_item", "non_item_tokens", "answer_tokens",
    "generated_tokens", "train_sequence_tokens", "train_s_per_sample", "train_step_s", "infer_s_per_sample",
    "train_peak_mib", "infer_peak_mib",
}
COMPARISON_KEYS = {
    "titles", "n", "baseline", "speeder", "baseline_prompt_tokens", "speeder_prompt_tokens", "train_speedup",
    "train_bound_eq3", "train_fraction_of_bound", "infer_speedup", "infer_bound_tokens", "infer_fraction_of_bound",
    "infer_ideal_eq4", "train_bound_backbone", "train_fraction_of_backbone_bound", "infer_bound_backbone",
    "infer_fraction_of_backbone_bound",
}
LENGTHS = (2, 20)
TITLES = ("real", 20)
SPEEDERS = ("speeder", "speeder_1tok")
BASELINES = ("llara", "tmf")


@pytest.fixture(scope="module")
def tokenizer():
    return build_speeder_model("tiny", max_history_length=8)[1]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("efficiency")
    threads = torch.get_num_threads()
    try:
        main(["--backbone", "tiny", "--lengths", ",".join(map(str, LENGTHS)), "--repeats", "1", "--warmup", "0",
              "--batch-size", "1", "--isolation", "none", "--threads", "1", "--out", str(out)])
    finally:  # --threads sets a process-wide value: later tests must run as they do alone
        torch.set_num_threads(threads)
    return json.loads((out / "efficiency.json").read_text()), out


def test_command_writes_json_table_and_png(report):
    data, out = report
    assert (out / "efficiency.png").stat().st_size > 0
    assert {"rows", "comparisons", "table", "targets", "profile", "machine", "encoding", "config"} <= set(data)
    assert {"cpu_model", "cpu_cores", "torch_version", "device"} <= set(data["machine"])
    assert data["config"]["title_tokens"] == list(TITLES)  # the default: real titles and the paper's 20 tokens
    expected = [(m, None, n) for m in SPEEDERS for n in LENGTHS]
    expected += [(m, t, n) for m in BASELINES for t in TITLES for n in LENGTHS]
    assert sorted(map(str, ((r["method"], r["titles"], r["n"]) for r in data["rows"]))) == sorted(map(str, expected))
    for row in data["rows"]:
        assert ROW_KEYS <= set(row), ROW_KEYS - set(row)
    for name in ("LLaRA-style", "TMF-style", "Speeder, 1 token/history item", "bound (Eq. 3)", "bound (tokens)"):
        assert name in data["table"]
    assert set(data["targets"]) == set(SPEEDERS)
    for checks in data["targets"].values():
        assert {"train_speedup_n20", "infer_speedup_n20", "fraction_of_bound_n20"} <= set(checks)
        assert all(checks[k]["value"] is not None for k in ("train_speedup_n20", "infer_speedup_n20"))
    assert {"speeder_vs_llara_n20_t20_train_speedup", "speeder_1tok_vs_llara_n20_real_infer_fraction_of_bound",
            "speeder_1tok_target_train_speedup_n20_met"} <= set(data["summary"])
    assert data["encoding"]["items"] == 1682 and data["encoding"]["encode_items_s"] > 0


def test_comparisons_are_the_time_ratios_and_the_token_count_bounds(report):
    data, _ = report
    d = data["model"]["hidden_size"]
    rows = {(r["method"], r["titles"], r["n"]): r for r in data["rows"]}
    comparisons = data["comparisons"]
    assert sorted(map(str, ((c["baseline"], c["titles"], c["n"], c["speeder"]) for c in comparisons))) == sorted(
        map(str, ((b, t, n, s) for b in BASELINES for t in TITLES for n in LENGTHS for s in SPEEDERS)))
    for c in comparisons:
        assert COMPARISON_KEYS <= set(c), COMPARISON_KEYS - set(c)
        b, s = rows[c["baseline"], c["titles"], c["n"]], rows[c["speeder"], None, c["n"]]
        assert c["train_speedup"] == pytest.approx(b["train_s_per_sample"] / s["train_s_per_sample"])
        assert c["infer_speedup"] == pytest.approx(b["infer_s_per_sample"] / s["infer_s_per_sample"])
        assert c["train_bound_eq3"] == pytest.approx(efficiency.eq3(b["train_sequence_tokens"], d)
                                                     / efficiency.eq3(s["train_sequence_tokens"], d))
        # inference: the tokens each reads and writes, so Speeder pays for its prompt
        assert c["infer_bound_tokens"] == pytest.approx(
            (b["prompt_tokens"] + b["answer_tokens"]) / (s["prompt_tokens"] + 1))
        assert c["train_fraction_of_bound"] == pytest.approx(c["train_speedup"] / c["train_bound_eq3"])
        assert c["infer_fraction_of_bound"] == pytest.approx(c["infer_speedup"] / c["infer_bound_tokens"])
        assert c["train_bound_backbone"] == pytest.approx(
            efficiency.backbone_macs(b["train_sequence_tokens"], data["model"])
            / efficiency.backbone_macs(s["train_sequence_tokens"], data["model"]))
        assert c["infer_fraction_of_backbone_bound"] == pytest.approx(c["infer_speedup"] / c["infer_bound_backbone"])
    at20 = next(c for c in comparisons if (c["baseline"], c["titles"], c["n"], c["speeder"]) == ("llara", 20, 20,
                                                                                                   "speeder"))
    target = data["targets"]["speeder"]
    assert target["train_speedup_n20"]["value"] == pytest.approx(at20["train_speedup"])
    assert target["fraction_of_bound_n20"]["value"] == pytest.approx(
        min(at20["train_fraction_of_bound"], at20["infer_fraction_of_bound"]))


def test_profile_and_item_encoding_per_step(report):
    profile = report[0]["profile"]
    assert profile["prompt"] == "speeder" and profile["n"] == 20
    for phase in ("train_step", "inference"):
        ops = profile[phase]["top_ops"]
        assert 1 <= len(ops) <= 10 and profile[phase]["self_cpu_ms_total"] > 0
        assert [op["self_cpu_ms"] for op in ops] == sorted((op["self_cpu_ms"] for op in ops), reverse=True)
        assert all(op["op"] and op["calls"] >= 1 for op in ops)
    assert any("mm" in op["op"] for op in profile["train_step"]["top_ops"])  # the matrix products are there
    encoding = profile["item_encoding"]
    row = next(r for r in report[0]["rows"] if (r["method"], r["n"]) == ("speeder", 20))
    assert encoding["placeholders"] == row["train_items_per_step"] == 25  # batch 1: 20 history items + 5 candidates
    assert encoding["distinct_items"] == row["train_distinct_items_per_step"] <= encoding["placeholders"]
    assert encoding["encoded_rows"] in (encoding["placeholders"], encoding["distinct_items"])
    assert encoding["once_per_distinct_item"] and encoding["encoded_rows"] == encoding["distinct_items"]


def test_token_counts_are_exact(report, tokenizer):
    rows = {(r["method"], r["titles"], r["n"]): r for r in report[0]["rows"]}
    titles, _ = load_movielens()
    llara = LlaraPromptBuilder(tokenizer)
    # The tiny word-level tokenizer: "1<item>" and " A<item>" are exactly 2 tokens, one answer token.
    for n in LENGTHS:
        speeder, compact = rows["speeder", None, n], rows["speeder_1tok", None, n]
        assert speeder["tokens_per_item"] == pytest.approx(2.0)
        assert speeder["answer_tokens"] == compact["answer_tokens"] == 1
        assert speeder["prompt_tokens"] - rows["speeder", None, 2]["prompt_tokens"] == 2 * (n - 2)
        # one token per history item: the index tokens are all that is gone; candidates keep their labels
        assert speeder["prompt_tokens"] - compact["prompt_tokens"] == n
        assert compact["tokens_per_item"] == pytest.approx((n + 2 * 5) / (n + 5))
        assert compact["non_item_tokens"] == speeder["non_item_tokens"]
        for setting in TITLES:
            # LLaRA: title tokens + 1 per item; TMF: title tokens + 2; same template besides the items.
            gap = rows["tmf", setting, n]["prompt_tokens"] - rows["llara", setting, n]["prompt_tokens"]
            assert gap == n + 5
            assert rows["tmf", setting, n]["tokens_per_item"] == pytest.approx(
                rows["llara", setting, n]["tokens_per_item"] + 1)
            assert rows["llara", setting, n]["non_item_tokens"] == rows["tmf", setting, n]["non_item_tokens"]
            assert rows["llara", setting, n]["generated_tokens"] == rows["llara", setting, n]["answer_tokens"] > 1
        assert rows["llara", 20, n]["tokens_per_item"] == pytest.approx(21.0)
        assert rows["llara", 20, n]["answer_tokens"] == 21  # 20 title tokens + EOS
    assert len(llara.title_ids("Toy Story")) == 2


@pytest.mark.parametrize("value, expected", [("real,20", ["real", 20]), ("20", [20]), (" 7, real ,7", [7, "real"])])
def test_title_settings_parse(value, expected):
    assert efficiency.parse_title_tokens(value) == expected


@pytest.mark.parametrize("value", ["0", "real,x", ","])
def test_bad_title_settings_name_the_valid_ones(value):
    with pytest.raises(ValueError, match="real"):
        efficiency.parse_title_tokens(value)


def test_llara_prompt_layout(tokenizer):
    history, candidates = ["Toy Story", "GoldenEye"], ["Four Rooms Again", "Get Shorty", "Heat"]  # distinct for tiny
    for builder, per_item in ((LlaraPromptBuilder(tokenizer), 1), (TmfPromptBuilder(tokenizer), 2)):
        prompt = builder.recommendation(history, candidates, answer=1)
        titles = [len(builder.title_ids(t)) for t in history + candidates]
        assert prompt.title_token_counts == titles
        assert prompt.num_items == per_item * 5
        assert prompt.item_slots == [k for k in range(5) for _ in range(per_item)]
        assert prompt.history_positions == [p for p in (1, 2, 0, 0, 0) for _ in range(per_item)]
        assert prompt.answer_token_ids == builder.title_ids("Get Shorty") + [tokenizer.eos_token_id]
        assert prompt.input_ids[prompt.prompt_length:] == prompt.answer_token_ids
        assert prompt.labels[: prompt.prompt_length] == [-100] * prompt.prompt_length
        assert builder.parse_answer(prompt.answer_token_ids, candidates) == 1
        assert builder.parse_answer([tokenizer.eos_token_id], candidates) == -1
    padded = LlaraPromptBuilder(tokenizer, title_tokens=7)
    assert len(padded.title_ids("Toy Story")) == 7
    assert padded.recommendation(history, candidates).title_token_counts == [7] * 5


def test_backbone_macs_count_the_decoder_layers_weights_and_attention():
    model, _ = build_speeder_model("tiny", text_feature_size=8, id_feature_size=8, modalities=["text", "id"])
    config = model.config.text_config
    shape = {"hidden_size": config.hidden_size, "num_layers": config.num_hidden_layers,
             "intermediate_size": config.intermediate_size, "num_attention_heads": config.num_attention_heads,
             "num_key_value_heads": config.num_key_value_heads}
    layers = model.get_decoder().layers
    weights = sum(module.weight.numel() for layer in layers for module in layer.modules()
                  if isinstance(module, torch.nn.Linear))
    # one token attending to no position: one multiply-accumulate per weight of the decoder layers' linear maps
    assert efficiency.backbone_macs(1, shape, context=0) == weights
    # attention adds 2·context·d per token and layer: scores against each key, then the weighted values
    assert efficiency.backbone_macs(10, shape) - efficiency.backbone_macs(10, shape, context=0) == (
        config.num_hidden_layers * 10 * 2 * 10 * config.hidden_size)
    # generation: the prompt in one pass, then one cached step per generated token after the first
    row = {"prompt_tokens": 10, "generated_tokens": 3}
    assert efficiency.backbone_inference_macs(row, shape) == (
        efficiency.backbone_macs(10, shape) + efficiency.backbone_macs(1, shape, 11)
        + efficiency.backbone_macs(1, shape, 12))
