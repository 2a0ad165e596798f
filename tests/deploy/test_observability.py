"""Alert rules and the Grafana dashboard name only metrics the service really exports.

The app is built with create_app, its lifespan started, and /metrics scraped through the ASGI transport.
Metrics that are defined in code but whose jobs the app does not run yet (audit verifier, retention
scheduler, while their wiring lands) are listed in PENDING_WIRING: each must at least exist in its
metrics class, so no rule can name a metric nobody defines.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from app.audit.metrics import AuditMetrics
from app.config import Settings
from app.main import create_app
from app.retention.metrics import RetentionMetrics
from tests.fixtures.relay import TEST_ADMIN_TOKEN

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "ops" / "deploy" / "prometheus" / "alerts.yaml"
DASHBOARD = ROOT / "ops" / "deploy" / "grafana" / "voicelog.json"
DEPLOY_DOC = ROOT / "docs" / "DEPLOY.md"
METRIC = re.compile(r"\bvoicelog_[a-z0-9_]+")
SAMPLE = re.compile(r"^(voicelog_[a-z0-9_]+)(?:\{|\s)", re.MULTILINE)
FAMILY = re.compile(r"^# TYPE (voicelog_[a-z0-9_]+) (counter|gauge|histogram)$", re.MULTILINE)
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}
# Defined in app/audit/metrics.py and app/retention/metrics.py; create_app does not run their jobs yet.
PENDING_WIRING = {
    "voicelog_audit_chain_ok", "voicelog_audit_last_verification_timestamp_seconds",
    "voicelog_audit_pending_entries", "voicelog_retention_overdue_buckets", "voicelog_retention_report_overdue",
    "voicelog_retention_blobs_pending", "voicelog_scheduler_job_runs_total",
    "voicelog_retention_recordings_purged_total", "voicelog_retention_kek_buckets_destroyed_total",
}


@pytest.fixture(scope="module")
def exported() -> set[str]:
    """Sample names on a freshly started app's /metrics (embedded SQLite, no stand-in)."""
    import asyncio
    import tempfile

    async def scrape() -> str:
        with tempfile.TemporaryDirectory() as tmp:
            settings = Settings(data_dir=Path(tmp) / "data", standin_enabled=False, demo_resource=False,
                                admin_token=TEST_ADMIN_TOKEN)
            from app import migrate

            settings.data_dir.mkdir(parents=True)
            await asyncio.to_thread(migrate.upgrade, settings.resolved_database_url)
            app = create_app(settings)
            async with app.router.lifespan_context(app), httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
                response = await client.get("/metrics")
                assert response.status_code == 200
                return response.text

    return series_names(asyncio.run(scrape()))


def series_names(exposition: str) -> set[str]:
    """Every series name the exposition declares: samples, and the families a labelled metric has not used
    yet (a counter by reason shows its samples only once a reason occurred)."""
    names = set(SAMPLE.findall(exposition))
    for family, kind in FAMILY.findall(exposition):
        family = family.removesuffix("_total")  # newer prometheus_client names counter families with it
        names |= {family + suffix for suffix in SUFFIXES[kind]}
    return names


def defined_but_not_wired() -> set[str]:
    registry = CollectorRegistry()
    AuditMetrics(registry)
    RetentionMetrics(registry)
    return series_names(generate_latest(registry).decode())


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in board["panels"] for target in panel["targets"]]


def referenced(exprs: list[str]) -> set[str]:
    return {name for expr in exprs for name in METRIC.findall(expr)}


def base_name(sample: str) -> str:
    for suffix in ("_bucket", "_count", "_sum"):
        if sample.endswith(suffix):
            return sample.removesuffix(suffix)
    return sample


def test_the_issue_asks_for_these_alerts() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    assert {"VoicelogRecordingBacklogGrowing", "VoicelogRecordingsIncompleteRate", "VoicelogPurgeOverdue",
            "VoicelogAuditVerificationFailed", "VoicelogDeniedReadBurst", "VoicelogRelayErrorRate"} <= names


@pytest.mark.parametrize(("source", "exprs"), [("alerts", [r["expr"] for r in alert_rules()]),
                                               ("dashboard", dashboard_exprs())])
def test_every_metric_referenced_is_exported_by_the_app_or_pending_wiring(
    exported: set[str], source: str, exprs: list[str]
) -> None:
    names = referenced(exprs)
    assert names, source
    missing = {n for n in names if n not in exported and base_name(n) not in {base_name(e) for e in exported}}
    assert missing <= PENDING_WIRING, f"{source} names metrics nobody exports: {sorted(missing - PENDING_WIRING)}"
    assert missing <= defined_but_not_wired(), sorted(missing - defined_but_not_wired())


def test_label_values_in_alerts_exist(exported: set[str]) -> None:
    expr = next(r["expr"] for r in alert_rules() if r["alert"] == "VoicelogRecordingsIncompleteRate")
    assert 'outcome="incomplete"' in expr
    assert "voicelog_recordings_finished_total" in exported


def test_every_alert_has_severity_summary_and_a_runbook_that_exists() -> None:
    doc = DEPLOY_DOC.read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
               for line in doc.splitlines() if line.startswith("#")}
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"page", "warn"}
        assert rule["annotations"]["summary"]
        runbook = rule["annotations"]["runbook_url"]
        path, _, anchor = runbook.partition("#")
        assert path == "docs/DEPLOY.md"
        assert anchor in anchors, f"{rule['alert']}: no heading for #{anchor} in DEPLOY.md"
        assert re.fullmatch(r"\d+[smh]", rule["for"])


def test_dashboard_is_valid_grafana_json() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] == "voicelog"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["targets"]
        assert {"x", "y", "w", "h"} <= panel["gridPos"].keys()
    assert {v["name"] for v in board["templating"]["list"]} == {"datasource", "namespace"}


def test_scrape_fixture_builds_a_real_app(exported: set[str]) -> None:
    assert "voicelog_relay_active_sessions" in exported
    assert "voicelog_recorder_backlog_bytes" in exported

