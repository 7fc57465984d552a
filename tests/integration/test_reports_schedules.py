"""Scheduled reports: stored, made at cron times, a missed run made once, never twice."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from broker.db.models import ReportRow
from broker.errors import NotFound, UserError
from broker.services.reports import schedules
from tests.support.usage_ledger import seed

CREATED = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)  # a Monday


def test_add_list_remove_and_validation(database, tmp_path: Path, home: Path) -> None:  # type: ignore[no-untyped-def]
    view = schedules.add_schedule(
        database,
        "0 8 * * 1",
        period="7d",
        fmt="html",
        out_dir=tmp_path / "out",
        webhook="https://hooks.example.com/services/T000/SECRET",
        now=CREATED,
    )
    assert view.next_due == datetime(2026, 11, 9, 8, 0, tzinfo=UTC)
    assert view.webhook == "https://hooks.example.com/..."  # the secret path is not shown
    assert [v.id for v in schedules.list_schedules(database)] == [view.id]
    for kwargs, field in (
        ({"cron": "0 25 * * *"}, "cron"),
        ({"period": "7 days"}, "period"),
        ({"fmt": "pdf"}, "format"),
        ({"webhook": "ftp://x"}, "webhook"),
        ({"group_by": "team,colour"}, "group-by"),
    ):
        args = {"cron": "0 8 * * 1", "out_dir": tmp_path, **kwargs}
        with pytest.raises(UserError, match=rf"^{field}:"):
            schedules.add_schedule(database, args.pop("cron"), **args)
    assert len(schedules.list_schedules(database)) == 1  # nothing half-written
    schedules.remove_schedule(database, view.id)
    assert schedules.list_schedules(database) == []
    with pytest.raises(NotFound):
        schedules.remove_schedule(database, view.id)


def test_due_reports_are_made_once_and_a_missed_run_once(database, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    seed(database, now=datetime(2026, 11, 20, tzinfo=UTC), jobs=10, days=20)
    out = tmp_path / "reports"
    view = schedules.add_schedule(
        database, "0 8 * * 1", period="7d", fmt="json", out_dir=out, now=CREATED
    )
    assert schedules.run_due(database, now=datetime(2026, 11, 9, 7, 59, tzinfo=UTC)) == []
    made = schedules.run_due(database, now=datetime(2026, 11, 9, 8, 0, tzinfo=UTC))
    assert [m.due_at for m in made] == [datetime(2026, 11, 9, 8, 0, tzinfo=UTC)]
    data = json.loads(Path(made[0].path).read_text())
    assert data["period_from"].startswith("2026-11-02T08:00")
    assert data["period_to"].startswith("2026-11-09T08:00")
    assert schedules.run_due(database, now=datetime(2026, 11, 9, 9, 0, tzinfo=UTC)) == []
    # down for three Mondays: only the newest missed run is made, once
    late = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
    made = schedules.run_due(database, now=late)
    assert [m.due_at for m in made] == [datetime(2026, 11, 30, 8, 0, tzinfo=UTC)]
    assert schedules.run_due(database, now=late) == []
    with database.session() as s:
        rows = s.query(ReportRow).order_by(ReportRow.due_at).all()
        assert [r.schedule_id for r in rows] == [view.id, view.id]
        assert rows[0].totals["spend"] > 0
    assert sorted(p.name for p in out.iterdir()) == [
        f"gpubroker-report-s{view.id}-20261109T0800Z.json",
        f"gpubroker-report-s{view.id}-20261130T0800Z.json",
    ]
    assert schedules.list_schedules(database)[0].next_due == datetime(2026, 12, 7, 8, tzinfo=UTC)


def test_racing_makers_make_one_report(database, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    seed(database, now=datetime(2026, 11, 8, tzinfo=UTC), jobs=8)
    schedules.add_schedule(database, "0 8 * * 1", fmt="html", out_dir=tmp_path, now=CREATED)
    due = datetime(2026, 11, 9, 8, 5, tzinfo=UTC)
    made: list = []
    barrier = threading.Barrier(4)

    def maker() -> None:
        barrier.wait()
        made.extend(schedules.run_due(database, now=due))

    threads = [threading.Thread(target=maker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 1
    with database.session() as s:
        assert s.query(ReportRow).count() == 1
    assert len(list(tmp_path.glob("*.html"))) == 1


class _Hook(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_webhook_gets_the_report(database, tmp_path: Path, home: Path) -> None:  # type: ignore[no-untyped-def]
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/hook/token"
        schedules.add_schedule(
            database,
            "*/15 * * * *",
            period="1d",
            fmt="csv",
            out_dir=tmp_path,
            webhook=url,
            now=CREATED,
        )
        made = schedules.run_due(database, now=CREATED + timedelta(minutes=20))
        assert made[0].webhook == "ok (204)"
        assert _Hook.received[-1]["path"] == made[0].path
        assert _Hook.received[-1]["due_at"] == "2026-11-02T09:45:00+00:00"
        assert "spend" in _Hook.received[-1]["totals"]
    finally:
        server.shutdown()
        server.server_close()
    # the receiver is gone: the report is still made and the failure recorded, once
    made = schedules.run_due(database, now=CREATED + timedelta(minutes=35))
    assert len(made) == 1 and made[0].webhook is not None
    assert made[0].webhook.startswith("error: ") and "token" not in made[0].webhook
    assert Path(made[0].path).exists()


def test_email_reaches_the_smtp_server_once(database, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from broker.config import load_settings
    from tests.support.smtp_sink import SmtpSink

    seed(database, now=CREATED, jobs=6)
    with pytest.raises(UserError, match=r"^email: 'not-an-address'"):
        schedules.add_schedule(database, "0 * * * *", out_dir=tmp_path, email="not-an-address")
    view = schedules.add_schedule(
        database,
        "0 * * * *",
        period="7d",
        fmt="html",
        out_dir=tmp_path,
        email=["lead@example.com", "finance@example.com, lead@example.com"],
        now=CREATED,
    )
    assert view.email == "lead@example.com,finance@example.com"
    with SmtpSink() as sink:
        settings = load_settings(
            {
                "GPUBROKER_HOME": str(tmp_path / "home"),
                "GPUBROKER_SMTP_HOST": "127.0.0.1",
                "GPUBROKER_SMTP_PORT": str(sink.port),
                "GPUBROKER_SMTP_FROM": "gpu@example.com",
            }
        )
        made = schedules.run_due(database, now=CREATED + timedelta(minutes=45), settings=settings)
        assert [m.email for m in made] == ["sent to 2"]
        # a second daemon at the same time makes nothing and sends nothing
        again = schedules.run_due(database, now=CREATED + timedelta(minutes=50), settings=settings)
        assert again == []
        [received] = sink.messages
    assert received.sender == "gpu@example.com"
    assert received.recipients == ["lead@example.com", "finance@example.com"]
    message = received.message
    assert message["Subject"] == "gpubroker report 2026-10-26 to 2026-11-02"
    body = message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert "spend" in body and "attached" in body
    [attachment] = list(message.iter_attachments())  # type: ignore[attr-defined]
    assert attachment.get_filename() == Path(made[0].path).name
    assert attachment.get_content_type() == "text/html"
    assert attachment.get_content() == Path(made[0].path).read_text()
    # no server at all: the report is still made, the failure recorded without secrets
    unreachable = load_settings(
        {
            "GPUBROKER_HOME": str(tmp_path / "home"),
            "GPUBROKER_SMTP_HOST": "127.0.0.1",
            "GPUBROKER_SMTP_PORT": str(sink.port),
            "GPUBROKER_SMTP_USER": "reports",
            "GPUBROKER_SMTP_PASSWORD": "hunter2",
        }
    )
    later = CREATED + timedelta(hours=1, minutes=35)  # due at 11:00
    made = schedules.run_due(database, now=later, settings=unreachable)
    assert len(made) == 1 and made[0].email is not None
    assert made[0].email.startswith("error: ") and "hunter2" not in made[0].email
    assert Path(made[0].path).exists()


def test_monthly_reports_cover_the_calendar_month(database, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for bad, words in (("1m", "ambiguous"), ("2026-11-01", "not a length"), ("ytd", "length")):
        with pytest.raises(UserError, match=rf"^period: .*{words}"):
            schedules.add_schedule(database, "0 8 1 * *", period=bad, out_dir=tmp_path)
    schedules.add_schedule(
        database, "0 8 1 * *", period="1mo", fmt="json", out_dir=tmp_path, now=CREATED
    )
    [made] = schedules.run_due(database, now=datetime(2026, 12, 1, 8, 0, tzinfo=UTC))
    assert made.period_from == datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
    assert made.period_to == datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
