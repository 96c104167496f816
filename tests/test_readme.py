"""The README and docs/ are true: the snippet runs, the commands are the ones CI runs, every results file they name
exists, the README's result figures are those files' figures, and every flag they name is one a command takes."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
DOCS = {path.relative_to(REPO).as_posix(): path.read_text() for path in sorted((REPO / "docs").glob("*.md"))}
PAGES = {"README.md": README, **DOCS}
MAIN_COMMAND = "bash scripts/install.sh && bash scripts/demo.sh"
TEST_COMMAND = "bash scripts/install.sh && .venv/bin/python -m pytest"
SKIPPED_DIRS = {".git", ".venv", "outputs", "runs", "__pycache__", ".pytest_cache", "speeder.egg-info"}


def repository_files(suffixes: set[str]) -> list[Path]:
    """The repository's own files with these endings (not the virtual environment, run outputs or caches)."""
    found = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS]
        found += [Path(root) / name for name in files if Path(name).suffix in suffixes or name == "run"]
    return found


def snippet(marker: str) -> str:
    match = re.search(rf"<!-- {marker} -->\s*```python\n(.*?)```", README, re.S)
    assert match, f"README has no python block after <!-- {marker} -->"
    return match.group(1)


def section(text: str, heading: str) -> str:
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"no '## {heading}' section"
    return match.group(1)


def bash_blocks(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, re.S)]


def test_usage_snippet_runs(tmp_path):
    result = subprocess.run([sys.executable, "-c", snippet("usage-snippet")], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "torch.Size([1, 5])" in result.stdout
    assert (tmp_path / "outputs" / "my-speeder" / "modeling_speeder.py").is_file()


def test_quick_start_gives_the_two_commands_that_ci_runs():
    assert bash_blocks(section(README, "Quick start")) == [MAIN_COMMAND, TEST_COMMAND]
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert ci_lines[-2:] == TEST_COMMAND.split(" && ")  # install, then the tests, as the last two steps


def test_readme_is_a_short_front_door():
    assert len(README) < 10_000, f"README.md has {len(README)} characters; move details to docs/"
    headings = re.findall(r"^## (.+)$", README, re.M)
    for heading in ("Quick start", "Results of the main job", "Using the model", "Layout"):
        assert heading in headings, f"README.md lost its '## {heading}' section"


def test_nothing_points_outside_the_repository():
    needles = ("../" + "shared", "PAPER" + ".md", "ASSETS" + ".md", "STYLE" + ".md")  # files users do not have
    offenders = [(path.relative_to(REPO).as_posix(), needle)
                 for path in repository_files({".md", ".py", ".sh", ".yaml", ".yml", ".toml", ".cfg", ".txt"})
                 for needle in needles if needle in path.read_text(errors="replace")]
    assert not offenders, f"{offenders} name files outside the repository: nothing there ships with it"


def test_every_results_file_and_repository_path_named_exists():
    missing = []
    for page, text in PAGES.items():
        named = set(re.findall(r"\bresults/[\w./-]*[\w/]", text))
        named |= {m for m in re.findall(r"`([\w-]+/[\w./-]*[\w/])(?::\w+)?`", text)
                  if m.split("/")[0] in {p.name for p in REPO.iterdir() if p.is_dir()} and m.split("/")[0] != "outputs"}
        named |= {link for link in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text)}
        base = REPO if page == "README.md" else REPO / "docs"
        for path in named:
            target = (REPO / path) if path.startswith(("results/", "configs/", "scripts/", "tests/")) else base / path
            if not target.exists() and not (REPO / path).exists():
                missing.append(f"{page}: {path}")
    assert not missing, f"named but not in the repository: {missing}"
    assert any("results/main_job/report/report.md" in text for text in PAGES.values())


def report_intervals() -> dict[str, str]:
    """Model name -> 'VHR@1 [low, high]' on the paper's pool, from the committed report's "Intervals" table."""
    report = (REPO / "results" / "main_job" / "report" / "report.md").read_text()
    intervals = re.search(r"^### Intervals\n(.*?)(?=^#)", report, re.S | re.M)
    assert intervals, "no '### Intervals' section in the committed report"
    return dict(re.findall(r"^\| ([^|]+?) \| (-?[\d.]+ \[-?[\d.]+, -?[\d.]+\]) \|", intervals.group(1), re.M))


def test_the_readme_results_are_the_committed_files_figures():
    table = section(README, "Results of the main job")
    rows = re.findall(r"^\| \**([\w ]+?)\** \| ([^|]+?) \| ([\d.]+) \| `(results/[^`]+\.json)` \|$", table, re.M)
    assert {name for name, *_ in rows} >= {"Speeder", "SASRec", "BERT4Rec", "Pop", "GRU4Rec"}, rows
    intervals = report_intervals()
    for name, paper_pool, extra_pools, source in rows:
        metrics = json.loads((REPO / source).read_text())
        metrics = metrics["test"] if "test" in metrics else metrics["test_metrics"]
        assert paper_pool.startswith(f"{metrics['vhr@1']:.4f} ["), (name, paper_pool, metrics["vhr@1"])
        assert extra_pools == f"{metrics['extra_pools']['vhr@1']:.4f}", (name, extra_pools)
        in_report = [value for model, value in intervals.items() if model.startswith(name)]
        assert in_report == [paper_pool], (name, paper_pool, in_report)


def test_the_research_figures_are_the_committed_summary_figures():
    models = json.loads((REPO / "results" / "research" / "summary.json").read_text())["models"]
    summary = {name: model["splits"]["ml-100k"] | {"cells": model["cells"]} for name, model in models.items()
               if "ml-100k" in model["splits"]}  # the main job's split, over its training seeds
    table = section(DOCS["docs/findings.md"], "Research runs")
    cell = r" \| ([^|]+?)"
    rows = re.findall(r"^\| ([\w -]+?)(?:, equal budget.*?)?" + cell * 4 + r" \|", table, re.M)
    checked = set()
    for name, paper, extra, minus_paper, minus_extra in rows:
        model = summary.get(name.lower().replace("-style", ""))
        if model is None:
            continue
        for text, key in ((paper, "paper"), (extra, "extra"), (minus_paper, "speeder_minus_paper"),
                          (minus_extra, "speeder_minus_extra")):
            figure = model.get(key)
            if figure is None or figure["cells"] == 1:
                continue
            assert text == f"{figure['mean']:.4f} ± {figure['std']:.4f}", (name, key, text, figure)
            checked.add(name)
    assert checked >= {"Speeder", "SASRec", "BERT4Rec", "GRU4Rec", "Pop"}, checked
    llara = summary["llara"]["cells"]["ml-100k/seed42"]
    minus = llara["speeder_minus_paper"]
    assert (f"| {llara['paper']['mean']:.4f} | not scored | {minus['mean']:+.4f} [{minus['low']:.4f}, "
            f"{minus['high']:.4f}] |") in table
    for name in ("sasrec", "bert4rec", "gru4rec", "pop"):  # the mean over seeds, with its paired interval
        for pools in ("paper", "extra"):
            pooled = summary[name][f"speeder_minus_{pools}_interval"]
            assert f"{pooled['mean']:+.4f} [{pooled['low']:+.4f}, {pooled['high']:+.4f}]" in table, (name, pools)
    readme = section(README, "Results of the main job")
    for name in ("speeder", "sasrec"):
        figure = summary[name]["paper"]
        assert f"{figure['mean']:.4f} ± {figure['std']:.4f}" in readme, name
    speeder_seed42 = summary["speeder"]["cells"]["ml-100k/seed42"]["paper"]["mean"]
    assert f"reaches {llara['paper']['mean']:.4f} against Speeder's {speeder_seed42:.4f}" in readme


def test_the_ablation_table_is_the_committed_summary():
    models = json.loads((REPO / "results" / "research" / "summary.json").read_text())["models"]
    table = section(DOCS["docs/findings.md"], "Ablations (Table 3)")
    interval = r"(-?[\d.]+ \[-?[\d.]+, -?[\d.]+\])"
    rows = re.findall(rf"^\| `(\w+)` \| [^|]+ \| {interval} \| {interval} \| {interval} \| {interval} \|$", table,
                      re.M)
    names = {name for name, *_ in rows}
    assert names >= {"wo_ppt", "wo_ppl", "gate_none", "wo_stage1", "wo_spae", "gate_relu"}, names
    for name, paper, minus_paper, extra, minus_extra in rows:
        cell = models[f"speeder/{name}"]["cells"]["ml-100k/seed42"]
        for text, key in ((paper, "paper"), (minus_paper, "speeder_minus_paper"), (extra, "extra"),
                          (minus_extra, "speeder_minus_extra")):
            figure = cell[key]
            assert text == f"{figure['mean']:.4f} [{figure['low']:.4f}, {figure['high']:.4f}]", (name, key, text)
        valid = json.loads((REPO / "results" / "research" / "ablations_valid" / f"full_minus_{name}.json").read_text())
        for pools in ("paper", "extra"):  # the valid differences quoted below the table
            figure = valid[pools]["a_minus_b"]
            assert f"{figure['mean']:+.4f} [{figure['low']:.4f}," in " ".join(table.split()), (name, pools)


def test_the_ablations_over_seeds_are_the_committed_summary():
    models = json.loads((REPO / "results" / "research" / "summary.json").read_text())["models"]
    text = " ".join(section(DOCS["docs/findings.md"], "Ablations (Table 3)").split())
    over_seeds = {name: model["splits"]["ml-100k"] for name, model in models.items()
                  if name.startswith("speeder/") and len(model["cells"]) > 1}
    assert over_seeds, "no ablation was run over several seeds"
    for name, split in over_seeds.items():
        for pools in ("paper", "extra"):
            figure = split[f"speeder_minus_{pools}_interval"]
            quoted = f"{figure['mean']:+.4f} [{figure['low']:.4f}, {figure['high']:.4f}]"
            assert quoted in text, (name, pools, quoted)


@pytest.fixture(scope="module")
def trainer_flags() -> set[str]:
    result = subprocess.run([sys.executable, "trainer/run.py", "--help"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return set(re.findall(r"--\w+", result.stdout))


def test_every_flag_named_is_taken_by_a_command(trainer_flags):
    sources = "\n".join(path.read_text() for path in repository_files({".py", ".sh"}))
    unknown = []
    for page, text in PAGES.items():
        for flag in sorted(set(re.findall(r"(?<![\w-])--[a-z][\w-]*", text))):
            if flag in ("--config_file", "--help"):  # accelerate's own; every command's
                continue
            if "_" in flag:  # trainer/run.py's (HfArgumentParser: SpeederArguments and SFTConfig fields)
                known = flag in trainer_flags
            else:  # trainer/run.py's, another command's argparse flag, or a dataclass field's (`synthetic`)
                known = (flag in trainer_flags or f'"{flag}"' in sources
                         or re.search(rf"^\s+{flag[2:].replace('-', '_')}: ", sources, re.M))
            if not known:
                unknown.append(f"{page}: {flag}")
    assert not unknown, f"flags no command takes: {unknown}"
