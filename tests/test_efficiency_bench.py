"""bench/efficiency.py on the tiny backbone: the command runs, the JSON and PNG appear, token counts are exact.

No timing assertions: these machines are noisy; the targets are read from the JSON of a real run.
"""

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

from baselines.llara import LlaraPromptBuilder, TmfPromptBuilder
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
    "method", "n", "m", "prompt_tokens", "tokens_per_item", "non_item_tokens", "answer_tokens", "generated_tokens",
    "train_sequence_tokens", "train_s_per_sample", "train_step_s", "infer_s_per_sample", "train_peak_mib",
    "infer_peak_mib", "train_speedup", "infer_speedup", "train_ideal_eq3", "infer_ideal_eq4",
    "train_fraction_of_ideal", "infer_fraction_of_ideal",
}


@pytest.fixture(scope="module")
def tokenizer():
    return build_speeder_model("tiny", max_history_length=8)[1]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("efficiency")
    threads = torch.get_num_threads()
    try:
        main(["--backbone", "tiny", "--lengths", "2,4", "--repeats", "1", "--warmup", "0", "--batch-size", "1",
              "--isolation", "none", "--threads", "1", "--out", str(out)])
    finally:  # --threads sets a process-wide value: later tests must run as they do alone
        torch.set_num_threads(threads)
    return json.loads((out / "efficiency.json").read_text()), out


def test_command_writes_json_table_and_png(report):
    data, out = report
    assert (out / "efficiency.png").stat().st_size > 0
    assert {"rows", "table", "targets", "machine", "encoding", "config"} <= set(data)
    assert {"cpu_model", "cpu_cores", "torch_version", "device"} <= set(data["machine"])
    assert sorted((r["method"], r["n"]) for r in data["rows"]) == sorted(
        (m, n) for m in ("speeder", "llara", "tmf") for n in (2, 4))
    for row in data["rows"]:
        assert ROW_KEYS <= set(row), ROW_KEYS - set(row)
    assert "LLaRA-style" in data["table"] and "TMF-style" in data["table"]
    assert {"train_speedup_n20", "infer_speedup_n20", "fraction_of_bound"} == set(data["targets"])
    assert data["encoding"]["items"] == 1682 and data["encoding"]["encode_items_s"] > 0


def test_token_counts_are_exact(report, tokenizer):
    rows = {(r["method"], r["n"]): r for r in report[0]["rows"]}
    titles, _ = load_movielens()
    llara = LlaraPromptBuilder(tokenizer)
    # The tiny word-level tokenizer: " 1 <item>" and " A <item>" are exactly 2 tokens, one answer token.
    for n in (2, 4):
        assert rows["speeder", n]["tokens_per_item"] == pytest.approx(2.0)
        assert rows["speeder", n]["answer_tokens"] == 1
        assert rows["speeder", n]["prompt_tokens"] - rows["speeder", 2]["prompt_tokens"] == 2 * (n - 2)
        # LLaRA: title tokens + 1 per item; TMF: title tokens + 2; same template besides the items.
        gap = rows["tmf", n]["prompt_tokens"] - rows["llara", n]["prompt_tokens"]
        assert gap == n + 5
        assert rows["tmf", n]["tokens_per_item"] == pytest.approx(rows["llara", n]["tokens_per_item"] + 1)
        assert rows["llara", n]["non_item_tokens"] == rows["tmf", n]["non_item_tokens"]
        assert rows["llara", n]["generated_tokens"] == rows["llara", n]["answer_tokens"] > 1
    assert len(llara.title_ids("Toy Story")) == 2


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
