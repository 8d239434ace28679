"""Grafana dashboards of StreamGate, generated with grafana-foundation-sdk (``make dashboards``).

One dashboard per role (edge, farm, control) and a fleet overview, written as JSON into
``deploy/monitoring/dashboards/``. The JSON is committed; tests/deploy/test_monitoring.py checks
it equals what this script generates, so edit this file, never the JSON. Only series the code
exports (edge/metrics.py, edge/storage_metrics.py, farm/metrics.py, control/service.py) and the
recording rules of rules.yml are queried.

    python deploy/monitoring/dashboards.py [--out DIR] [--check]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

HERE = Path(__file__).resolve().parent
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
EDGE = 'job="streamgate-edge"'
CONTROL = 'job="streamgate-control"'


def query(expr: str, legend: str = "", ref: str = "A") -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).ref_id(ref)
    return q.legend_format(legend) if legend else q


def graph(title: str, unit: str, *queries: tuple[str, str], description: str = "") -> timeseries.Panel:
    panel = timeseries.Panel().title(title).unit(unit).datasource(DATASOURCE).height(8).span(12)
    if description:
        panel = panel.description(description)
    for i, (expr, legend) in enumerate(queries):
        panel = panel.with_target(query(expr, legend, chr(ord("A") + i)))
    return panel


def figure(title: str, unit: str, expr: str) -> stat.Panel:
    return (stat.Panel().title(title).unit(unit).datasource(DATASOURCE).height(4).span(6)
            .with_target(query(expr).instant()))


def board(uid: str, title: str, tags: list[str]) -> dashboard.Dashboard:
    return (dashboard.Dashboard(title).uid(uid).tags(["streamgate", *tags]).refresh("30s")
            .time("now-6h", "now").timezone("browser")
            .with_variable(dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus")))


def edge_board() -> dashboard.Dashboard:
    return (board("streamgate-edge", "StreamGate / Edge", ["edge"])
            .with_row(dashboard.Row("Traffic"))
            .with_panel(figure("Requests/s", "reqps", f"sum(rate(streamgate_edge_requests_total{{{EDGE}}}[5m]))"))
            .with_panel(figure("5xx ratio", "percentunit", "streamgate:edge_errors:ratio_rate5m"))
            .with_panel(figure("Egress", "Bps", f"sum(rate(streamgate_edge_response_bytes_total{{{EDGE}}}[5m]))"))
            .with_panel(figure("Free disk (min)", "bytes", f"min(streamgate_storage_free_bytes{{{EDGE}}})"))
            .with_panel(graph("Requests by route", "reqps", ("streamgate:edge_requests:rate5m", "{{route}}")))
            .with_panel(graph("Requests by status", "reqps",
                              (f"sum by (status) (rate(streamgate_edge_requests_total{{{EDGE}}}[5m]))", "{{status}}")))
            .with_row(dashboard.Row("Latency and caches"))
            .with_panel(graph("p99 latency by route", "s",
                              ("streamgate:edge_request_duration_seconds:p99_5m", "{{route}}")))
            .with_panel(graph("p50 latency by route", "s", (
                "histogram_quantile(0.5, sum by (le, route) "
                f"(rate(streamgate_edge_request_duration_seconds_bucket{{{EDGE}}}[5m])))", "{{route}}")))
            .with_panel(graph("Cache hit ratio by tier", "percentunit",
                              ("streamgate:edge_cache_hit:ratio_rate5m", "{{tier}}")))
            .with_panel(graph("Egress by instance", "Bps", (
                f"sum by (instance) (rate(streamgate_edge_response_bytes_total{{{EDGE}}}[5m]))", "{{instance}}"))))


def farm_board() -> dashboard.Dashboard:
    return (board("streamgate-farm", "StreamGate / Farm and broker", ["farm", "broker"])
            .with_row(dashboard.Row("Queue"))
            .with_panel(figure("Queued jobs", "short", "max(streamgate_farm_queue_length)"))
            .with_panel(figure("Running jobs", "short", "max(streamgate_farm_running_jobs)"))
            .with_panel(figure("Pool workers", "short", "sum(streamgate_farm_pool_workers)"))
            .with_panel(figure("Dead-lettered (15m)", "short", "streamgate:farm_dead_lettered:increase15m"))
            .with_panel(graph("Queue and running", "short", ("max(streamgate_farm_queue_length)", "queued"),
                              ("max(streamgate_farm_running_jobs)", "running")))
            .with_panel(graph("Jobs by outcome", "ops", ("streamgate:farm_jobs:rate5m", "{{outcome}}")))
            .with_row(dashboard.Row("Pipeline"))
            .with_panel(graph("Job time (p50, p95)", "s", (
                "histogram_quantile(0.5, sum by (le) (rate(streamgate_farm_job_seconds_bucket[30m])))", "p50"), (
                "histogram_quantile(0.95, sum by (le) (rate(streamgate_farm_job_seconds_bucket[30m])))", "p95")))
            .with_panel(graph("Encode fps (p50)", "short", (
                "histogram_quantile(0.5, sum by (le) (rate(streamgate_farm_encode_fps_bucket[30m])))", "fps")))
            .with_panel(graph("Stage time (p95)", "s", (
                "histogram_quantile(0.95, sum by (le, stage) (rate(streamgate_farm_stage_seconds_bucket[30m])))",
                "{{stage}}"))))


def control_board() -> dashboard.Dashboard:
    return (board("streamgate-control", "StreamGate / Control", ["control"])
            .with_row(dashboard.Row("Fleet view"))
            .with_panel(figure("Broker up", "bool", f"max(streamgate_fleet_broker_up{{{CONTROL}}})"))
            .with_panel(figure("Leader held", "bool", f"count(streamgate_fleet_broker_leader{{{CONTROL}}} == 1)"))
            .with_panel(figure("View age", "s", f"time() - max(streamgate_fleet_view_timestamp_seconds{{{CONTROL}}})"))
            .with_panel(figure("KV publish errors", "short", f"sum(streamgate_scaling_publish_errors{{{CONTROL}}})"))
            .with_panel(graph("Instances by role and health", "short", (
                f"sum by (role, status) (streamgate_fleet_instances{{{CONTROL}}})", "{{role}} {{status}}")))
            .with_panel(graph("Workers by state", "short",
                              (f"streamgate_fleet_workers{{{CONTROL}}}", "{{state}}")))
            .with_row(dashboard.Row("Scaling"))
            .with_panel(graph("Scaling decision", "short", (
                f"streamgate_scaling_farm_workers{{{CONTROL}}}", "fleet workers"), (
                f"streamgate_scaling_per_farm_workers{{{CONTROL}}}", "per farm")))
            .with_panel(graph("Pressure (queue / target)", "short",
                              (f"streamgate_scaling_pressure{{{CONTROL}}}", "pressure"))))


def fleet_board() -> dashboard.Dashboard:
    return (board("streamgate-fleet", "StreamGate / Fleet overview", ["fleet"])
            .with_row(dashboard.Row("Playback SLO (99.9%)"))
            .with_panel(figure("Errors (1h)", "percentunit", "streamgate:playback_errors:ratio_rate1h"))
            .with_panel(figure("Budget burn (1h)", "short", "streamgate:playback_errors:ratio_rate1h / 0.001"))
            .with_panel(figure("Budget burn (3d)", "short", "streamgate:playback_errors:ratio_rate3d / 0.001"))
            .with_panel(figure("Edges up", "short", f"sum(streamgate_fleet_edge_up{{{CONTROL}}})"))
            .with_panel(graph("Playback error ratio", "percentunit",
                              ("streamgate:playback_errors:ratio_rate5m", "5m"),
                              ("streamgate:playback_errors:ratio_rate1h", "1h"),
                              ("streamgate:playback_errors:ratio_rate6h", "6h")))
            .with_panel(graph("Requests per edge", "reqps", (
                f"rate(streamgate_fleet_edge_requests_total{{{CONTROL}}}[5m])", "{{instance}}")))
            .with_row(dashboard.Row("Farm"))
            .with_panel(graph("Queue vs workers", "short", (
                f"streamgate_fleet_queue_length{{{CONTROL}}}", "queued"), (
                f"streamgate_fleet_workers{{{CONTROL}, state=\"active\"}}", "active workers"), (
                f"streamgate_scaling_farm_workers{{{CONTROL}}}", "wanted workers")))
            .with_panel(graph("Tasks", "ops", (
                f"rate(streamgate_fleet_tasks_total{{{CONTROL}}}[5m])", "{{outcome}}"))))


BOARDS = {"edge": edge_board, "farm": farm_board, "control": control_board, "fleet": fleet_board}


def render(name: str) -> str:
    return json.dumps(BOARDS[name]().build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "dashboards")
    parser.add_argument("--check", action="store_true", help="exit 1 when a committed file differs")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    stale = []
    for name in BOARDS:
        path, text = args.out / f"{name}.json", render(name)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
    if stale:
        print(f"stale dashboards (run make dashboards): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
