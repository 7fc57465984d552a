"""The HTML report, made by the CLI, rendered by a real headless Chromium.

Chromium logs every console message of the page to stderr (``INFO:CONSOLE``); the page
has no scripts and a Content-Security-Policy that blocks any network load, so any such
line (a blocked fetch, a parse problem) is a failure. The control case shows the check
sees a page that tries to load something.
"""

from __future__ import annotations

import re
import struct
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from broker.db.engine import Database
from tests.support.usage_ledger import seed

CHROMIUM = Path("/usr/bin/chromium")
GPUBROKER = str(Path(sys.executable).with_name("gpubroker"))
CHARTS = (
    "chart-timeline",
    "chart-provider",
    "chart-region",
    "chart-gpu",
    "chart-team",
    "chart-pricing",
    "chart-savings",
    "chart-budgets",
)
# The figures a platform lead asks for first, each an element of its own.
FIGURES = (
    "previous-change",
    "idle-cost",
    "budget-forecast",
    "pricing-split",
    "gpu-hour-cost",
    "team-shares",
    "overruns",
)
# Appended to a copy of the page (its CSP removed, the CSS and markup unchanged): the
# page's width against the viewport's, written where --dump-dom shows it.
PROBE = (
    "<script>document.title = 'WIDTHS ' + document.documentElement.scrollWidth + ' ' + "
    "document.documentElement.clientWidth;</script>"
)

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"
)


def _chromium(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            *extra,
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _console(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def test_cli_report_renders_in_chromium(home: Path, tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    db = Database(f"sqlite:///{home / 'broker.db'}")
    seed(db, now=now - timedelta(hours=1), jobs=20, days=6)
    db.dispose()
    page = tmp_path / "r.html"
    made = subprocess.run(
        [GPUBROKER, "report", "--since", "7d", "--format", "html", "--out", str(page)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    html = page.read_text()
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    assert "<script" not in html

    shot = tmp_path / "shot.png"
    result = _chromium(
        page, tmp_path / "profile", "--dump-dom", f"--screenshot={shot}", "--window-size=1100,2400"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert _console(result.stderr) == []
    dom = result.stdout
    for chart in CHARTS:
        assert f'id="{chart}"' in dom, chart
    assert dom.count("<svg") == len(CHARTS)
    assert dom.count("<rect") > 20  # bars were drawn
    assert "research" in dom and "H100-80GB" in dom
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (1100, 2400)
    assert len(png) > 30_000  # charts and text, not a blank page


def _widths(html: str, width: int, tmp_path: Path) -> tuple[int, int]:
    """(scroll width, client width) of ``html`` in a viewport ``width`` px wide."""
    probe = tmp_path / f"probe-{width}.html"
    page = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", html)
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    result = _chromium(
        probe, tmp_path / f"profile-{width}", "--dump-dom", f"--window-size={width},2000"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    found = re.search(r"<title>WIDTHS (\d+) (\d+)</title>", result.stdout)
    assert found, result.stdout[:500]
    return int(found.group(1)), int(found.group(2))


def test_report_fits_600_and_1280_px_with_every_figure(home: Path, tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    db = Database(f"sqlite:///{home / 'broker.db'}")
    seed(db, now=now - timedelta(hours=1), jobs=20, days=20)  # reaches the previous window
    db.dispose()
    page = tmp_path / "r.html"
    made = subprocess.run(
        [GPUBROKER, "report", "--since", "1w", "--format", "html", "--out", str(page)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    html = page.read_text()
    for figure in FIGURES:
        assert f'id="{figure}"' in html, figure
    assert "vs previous period" in html and "$ per GPU-hour" in html
    assert '<tr class="over">' in html  # the seed has jobs far past their estimates
    assert "@media print" in html
    for width in (600, 1280):
        scroll, client = _widths(html, width, tmp_path)
        assert scroll <= client, f"horizontal scroll at {width} px: {scroll} > {client}"
    # the check sees an overflow when there is one
    wide = html.replace("</body>", '<div style="width:900px">wide</div></body>')
    scroll, client = _widths(wide, 600, tmp_path)
    assert scroll > client


def test_empty_window_says_so(home: Path, tmp_path: Path) -> None:
    page = tmp_path / "empty.html"
    made = subprocess.run(
        [GPUBROKER, "report", "--since", "1mo", "--format", "html", "--out", str(page)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    html = page.read_text()
    assert 'id="empty-state"' in html and "No metered usage in this window" in html
    assert "chart-timeline" not in html
    scroll, client = _widths(html, 600, tmp_path)
    assert scroll <= client


def test_the_console_check_sees_a_network_load(tmp_path: Path) -> None:
    page = tmp_path / "bad.html"
    page.write_text(
        '<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'\"></head><body>"
        '<img src="http://127.0.0.1:9/x.png"></body></html>'
    )
    result = _chromium(page, tmp_path / "profile", "--dump-dom")
    assert result.returncode == 0
    assert any("Content Security Policy" in line for line in _console(result.stderr))
