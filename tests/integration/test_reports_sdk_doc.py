"""The SDK examples in docs/sdk.md and the README run as they are, in a fresh home."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _example(path: Path, heading: str) -> str:
    text = path.read_text()
    match = re.search(rf"^{re.escape(heading)}\n.*?```python\n(.*?)```", text, re.S | re.M)
    assert match, f"{path.name}: no python block under {heading!r}"
    return match.group(1)


def _run(code: str, name: str) -> None:
    exec(compile(code, name, "exec"), {"__name__": "__example__"})


def test_sdk_doc_example_runs(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    _run(_example(ROOT / "docs" / "sdk.md", "## A complete example"), "docs/sdk.md")
    out = capsys.readouterr().out
    assert "p5.48xlarge" in out  # offers from the bundled catalog
    assert "cheapest: " in out and "plan: 1 placed" in out
    assert "llama-7b-finetune applied" in out
    assert "cancelled: CANCELLED" in out
    page = (tmp_path / "spend.html").read_text()
    # nothing ran in the fresh home: the page says so rather than drawing $0 charts
    assert page.startswith("<!DOCTYPE html>") and 'id="empty-state"' in page
    assert (home / "broker.db").exists()  # it used the home it was given


def test_readme_example_runs(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    _run(_example(ROOT / "README.md", "## Python SDK"), "README.md")
    out = capsys.readouterr().out
    assert "research may still spend 5000" in out
    assert (tmp_path / "last-week.html").exists()
