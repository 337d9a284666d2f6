"""What an install brings: dependency floors past known CVEs, and a run environment without the
test tools (``make run`` installs the runtime dependencies only)."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).parents[1]


def _requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {Requirement(line).name.lower(): Requirement(line) for line in project["dependencies"]}


@pytest.mark.parametrize(
    ("package", "first_safe", "why"),
    [
        ("torch", "2.6", "torch.load(weights_only=True) executes code before 2.6 (CVE-2025-32434)"),
        ("pillow", "10.3", "decoder CVEs before 10.3"),
    ],
)
def test_no_allowed_version_has_the_known_vulnerability(package: str, first_safe: str, why: str) -> None:
    specifier = _requirements()[package].specifier
    below = Version(first_safe).release
    unsafe = Version(".".join(map(str, (*below[:-1], below[-1] - 1, 99))))
    assert not specifier.contains(unsafe, prereleases=True), why
    assert specifier.contains(Version(first_safe)), f"{package} {first_safe} must still install"


def test_make_run_installs_no_test_tools(tmp_path: Path) -> None:
    plan = subprocess.run(
        ["make", "-n", "run", f"VENV={tmp_path / 'venv'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    installs = [line for line in plan.splitlines() if "pip install" in line]
    assert installs and not any("[test]" in line or "[dev]" in line for line in installs), installs
    assert not {"moto", "pytest", "flask"} & set(_requirements())
