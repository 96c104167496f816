"""Installing Speeder shadows no top-level name of another distribution (issue 17 item 5): next to a package that
provides its own `trainer`, both import, and Speeder's model package still registers with transformers."""

import shutil
import site
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("setup.cfg", "pyproject.toml", "README.md")
REPOSITORY_FOLDERS = ("modeling_speeder", "trainer", "datasets_builder", "baselines", "metrics", "hub_upload", "bench")


def pip_install(target: Path, *projects: Path):
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
               "--target", str(target), *map(str, projects)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_speeder_installs_only_its_model_package_next_to_another_trainer(tmp_path):
    source = tmp_path / "speeder"  # a copy of the project: building it writes build/ and *.egg-info
    source.mkdir()
    for name in PROJECT_FILES:
        shutil.copy2(REPO / name, source / name)
    for name in REPOSITORY_FOLDERS:
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    other = tmp_path / "other"  # another distribution with a top-level `trainer`, as PyPI's `trainer` has
    (other / "trainer").mkdir(parents=True)
    (other / "trainer" / "__init__.py").write_text('WHO = "other"\n')
    (other / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=64"]\nbuild-backend = "setuptools.build_meta"\n\n'
        '[project]\nname = "other-trainer"\nversion = "1.0"\n\n[tool.setuptools]\npackages = ["trainer"]\n'
    )
    site_dir = tmp_path / "site"
    pip_install(site_dir, other, source)

    top_level = {path.name for path in site_dir.iterdir() if not path.name.endswith((".dist-info", ".egg-info"))}
    assert top_level - {"__pycache__"} == {"trainer", "modeling_speeder"}, top_level
    record = next(site_dir.glob("speeder-*.dist-info")) / "RECORD"
    assert {line.split("/")[0] for line in record.read_text().splitlines()} <= {
        "modeling_speeder", next(site_dir.glob("speeder-*.dist-info")).name}

    # A fresh interpreter that sees the target and the dependencies, but neither this repository nor its editable
    # install (no .pth files are read: -S, then the dependencies' folder by hand).
    dependencies = [p for p in site.getsitepackages() if Path(p).is_dir()]
    code = f"""
import sys
sys.path[:0] = [{str(site_dir)!r}]
sys.path += {dependencies!r}
import trainer
import modeling_speeder
from transformers import AutoConfig, AutoProcessor
assert trainer.WHO == "other", trainer.__file__
assert modeling_speeder.__file__.startswith({str(site_dir)!r}), modeling_speeder.__file__
assert AutoConfig.for_model("speeder").model_type == "speeder"
for name in ("datasets_builder", "baselines", "metrics", "hub_upload", "bench"):
    try:
        __import__(name)
    except ImportError:
        continue
    raise AssertionError(name + " was installed as a top-level package")
print("ok")
"""
    result = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=tmp_path,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
