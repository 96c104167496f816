"""The README's commands and snippets are true."""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def snippet(marker: str) -> str:
    match = re.search(rf"<!-- {marker} -->\s*```python\n(.*?)```", README, re.S)
    assert match, f"README has no python block after <!-- {marker} -->"
    return match.group(1)


def test_usage_snippet_runs(tmp_path):
    result = subprocess.run([sys.executable, "-c", snippet("usage-snippet")], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "torch.Size([1, 5])" in result.stdout
    assert (tmp_path / "outputs" / "my-speeder" / "modeling_speeder.py").is_file()


def test_ci_runs_the_readme_install_and_test_commands():
    ci = (REPO / ".ci" / "run").read_text()
    assert "bash scripts/install.sh" in README and "bash scripts/install.sh" in ci
    assert ".venv/bin/python -m pytest" in README and ".venv/bin/python -m pytest" in ci
