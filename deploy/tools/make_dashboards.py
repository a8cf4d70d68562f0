#!/usr/bin/env python3
"""Writes the Grafana dashboards of the chart (deploy/helm/millipede/dashboards/*.json).

The panels are described here once, compactly; the JSON files are generated from them and
committed (the chart ships them as ConfigMaps). tests/deploy/chart_test.py checks that the files
are what this script writes, and tests/deploy/prometheus_test.py runs every expression against a
real Prometheus scraping a `millipede local` cluster.

    deploy/tools/make_dashboards.py            rewrite the files
    deploy/tools/make_dashboards.py --check    exit 1 when a file differs

Expressions use the Grafana variables $namespace and $__rate_interval. Worker series carry no
stage label of their own: `* on (instance) group_left (stage) millipede_stage_info` attaches the
stage the worker holds in the current pipeline.
"""

import argparse
import json
import pathlib
import sys

OUT = pathlib.Path(__file__).resolve().parents[1] / "helm" / "millipede" / "dashboards"

NS = 'namespace=~"$namespace"'
RATE = "$__rate_interval"
STAGE = "* on (instance) group_left (stage) millipede_stage_info"


def rate(metric, selector=""):
    sel = NS + (", " + selector if selector else "")
    return f"rate({metric}{{{sel}}}[{RATE}])"


def quantile(q, metric, by="", selector="", staged=False):
    """histogram_quantile over the _bucket series of `metric`, summed by `by` and le."""
    inner = rate(metric + "_bucket", selector)
    if staged:
        inner = f"{inner} {STAGE}"
    labels = ", ".join([x for x in [by, "le"] if x])
    return f"histogram_quantile({q}, sum by ({labels}) ({inner}))"


def staged(expr, by="stage", agg="sum"):
    return f"{agg} by ({by}) ({expr} {STAGE})"


def target(expr, legend):
    return {"expr": expr, "legendFormat": legend}


class Board:
    def __init__(self, uid, title, description):
        self.uid, self.title, self.description = uid, title, description
        self.panels = []
        self.x = self.y = 0
        self.row_h = 0

    def row(self, title):
        if self.x:
            self.y += self.row_h
            self.x = 0
        self.panels.append({"type": "row", "title": title, "collapsed": False,
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []})
        self.y += 1
        self.row_h = 0

    def panel(self, title, description, targets, unit="short", kind="timeseries", w=12, h=8,
              stack=False, minimum=None, maximum=None):
        if self.x + w > 24:
            self.y += self.row_h
            self.x = 0
            self.row_h = 0
        refs = "ABCDEFGHIJ"
        p = {
            "type": kind,
            "title": title,
            "description": description,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": h, "w": w, "x": self.x, "y": self.y},
            "targets": [dict(t, refId=refs[i], datasource={"type": "prometheus",
                                                           "uid": "${datasource}"})
                        for i, t in enumerate(targets)],
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        }
        d = p["fieldConfig"]["defaults"]
        if minimum is not None:
            d["min"] = minimum
        if maximum is not None:
            d["max"] = maximum
        if kind == "timeseries":
            d["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10,
                           "showPoints": "never",
                           "stacking": {"mode": "normal" if stack else "none", "group": "A"}}
            p["options"] = {"legend": {"displayMode": "list", "placement": "bottom",
                                       "showLegend": True},
                            "tooltip": {"mode": "multi", "sort": "desc"}}
        else:  # stat
            p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "",
                                              "values": False},
                            "colorMode": "value", "graphMode": "area", "textMode": "auto"}
        self.panels.append(p)
        self.x += w
        self.row_h = max(self.row_h, h)

    def json(self):
        for i, p in enumerate(self.panels):
            p["id"] = i + 1
        ds = {"type": "prometheus", "uid": "${datasource}"}
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": ["millipede"],
            "editable": True,
            "graphTooltip": 1,
            "schemaVersion": 39,
            "version": 1,
            "refresh": "30s",
            "time": {"from": "now-3h", "to": "now"},
            "timezone": "browser",
            "annotations": {"list": []},
            "links": [{"type": "dashboards", "tags": ["millipede"], "asDropdown": True,
                       "title": "Millipede", "includeVars": True, "keepTime": True}],
            "templating": {"list": [
                {"name": "datasource", "label": "Data source", "type": "datasource",
                 "query": "prometheus", "current": {}, "hide": 0, "refresh": 1},
                {"name": "namespace", "label": "Namespace", "type": "query", "datasource": ds,
                 "definition": "label_values(millipede_build_info, namespace)",
                 "query": {"query": "label_values(millipede_build_info, namespace)",
                           "refId": "namespace"},
                 "includeAll": True, "allValue": ".*", "multi": False, "refresh": 2,
                 "sort": 1, "current": {}, "hide": 0},
            ]},
            "panels": self.panels,
        }


def overview():
    b = Board("millipede-overview", "Millipede / Cluster overview",
              "Requests, time to first token, throughput and the queue of a Millipede cluster.")
    b.row("State")
    b.panel("Pipeline ready", "1 when a pipeline takes requests (coordinator).",
            [target(f"max(millipede_pipeline_ready{{{NS}}})", "ready")], kind="stat", w=4,
            h=4)
    b.panel("Workers by state", "Workers the coordinator knows, by state.",
            [target(f"sum by (state) (millipede_workers{{{NS}}})", "{{state}}")], kind="stat",
            w=8, h=4)
    b.panel("Pipeline rebuilds (1h)", "Pipelines built in the last hour (the first included).",
            [target(f"sum(increase(millipede_pipeline_rebuilds_total{{{NS}}}[1h]))", "rebuilds")],
            kind="stat", w=4, h=4)
    b.panel("Processes by version", "Scraped processes by component and version.",
            [target(f"count by (component, version) (millipede_build_info{{{NS}}})",
                    "{{component}} {{version}}")], kind="stat", w=8, h=4)
    b.row("Requests")
    b.panel("Requests per second", "Admitted, completed, failed (by gRPC code), cancelled and "
            "rejected (by reason) requests.",
            [target(f"sum({rate('millipede_requests_admitted_total')})", "admitted"),
             target(f"sum({rate('millipede_requests_completed_total')})", "completed"),
             target(f"sum by (code) ({rate('millipede_requests_failed_total')})",
                    "failed {{code}}"),
             target(f"sum by (reason) ({rate('millipede_requests_cancelled_total')})",
                    "cancelled {{reason}}"),
             target(f"sum by (reason) ({rate('millipede_requests_rejected_total')})",
                    "rejected {{reason}}")], unit="reqps")
    b.panel("Queue", "Requests holding KV in the pipeline (running) and waiting for KV or a "
            "pipeline.",
            [target(f"sum(millipede_requests_running{{{NS}}})", "running"),
             target(f"sum(millipede_requests_waiting{{{NS}}})", "waiting")], unit="short",
            minimum=0)
    b.row("Latency")
    b.panel("Time to first token", "From acceptance to the first sampled token.",
            [target(quantile(q, "millipede_time_to_first_token_seconds"), f"p{round(q * 100)}")
             for q in (0.5, 0.9, 0.99)], unit="s", w=8)
    b.panel("Queue time", "From acceptance to the first prefill chunk.",
            [target(quantile(q, "millipede_request_queue_time_seconds"), f"p{round(q * 100)}")
             for q in (0.5, 0.99)], unit="s", w=8)
    b.panel("Prefill time", "From the first prefill chunk to the last.",
            [target(quantile(q, "millipede_request_prefill_time_seconds"), f"p{round(q * 100)}")
             for q in (0.5, 0.99)], unit="s", w=8)
    b.row("Throughput")
    b.panel("Tokens per second", "Prompt tokens prefilled and tokens generated, per second.",
            [target(f"sum({rate('millipede_prompt_tokens_total')})", "prefill"),
             target(f"sum({rate('millipede_generation_tokens_total')})", "generated")],
            unit="short", w=8)
    b.panel("Prefill throughput of the last request",
            "Prompt tokens / prefill seconds of the last request whose prefill finished.",
            [target(f"max(millipede_prefill_tokens_per_second{{{NS}}})", "tokens/s")],
            unit="short", w=8)
    b.panel("Prompt length", "Prompt tokens of accepted requests.",
            [target(quantile(q, "millipede_request_prompt_tokens"), f"p{round(q * 100)}")
             for q in (0.5, 0.99)], unit="short", w=8)
    return b


def pipeline():
    b = Board("millipede-pipeline", "Millipede / Pipeline health",
              "Per-stage busy and idle time, chunk sizes and activation transfers.")
    b.row("Stages (reported to the coordinator)")
    b.panel("Stage busy", "Compute seconds per second of each stage (1 = always computing).",
            [target(f"sum by (stage) ({rate('millipede_pipeline_stage_busy_seconds_total')})",
                    "stage {{stage}}")], unit="percentunit", minimum=0, w=8)
    b.panel("Stage idle", "Seconds per second each stage waited for its input activations.",
            [target(f"sum by (stage) ({rate('millipede_pipeline_stage_idle_seconds_total')})",
                    "stage {{stage}}")], unit="percentunit", minimum=0, w=8)
    b.panel("Bubble ratio", "Moving average of wait / (wait + compute) per step, by stage.",
            [target(f"max by (stage) (millipede_pipeline_stage_bubble_ratio{{{NS}}})",
                    "stage {{stage}}")], unit="percentunit", minimum=0, maximum=1, w=8)
    b.row("Stages (the workers' own view)")
    b.panel("Worker busy and idle", "Seconds per second each stage computed and waited for "
            "work or input (pipeline bubbles).",
            [target(staged(rate("millipede_stage_busy_seconds_total")), "busy {{stage}}"),
             target(staged(rate("millipede_stage_idle_seconds_total")), "idle {{stage}}")],
            unit="percentunit", minimum=0, w=8)
    b.panel("Forward time", "Time a stage ran its layers on one step, by step kind.",
            [target(quantile(0.5, "millipede_stage_forward_seconds", by="stage, kind",
                             staged=True), "p50 {{kind}} stage {{stage}}"),
             target(quantile(0.99, "millipede_stage_forward_seconds", by="stage, kind",
                             staged=True), "p99 {{kind}} stage {{stage}}")], unit="s", w=8)
    b.panel("Steps per second", "Steps each stage ran, by outcome (passed_through: the request "
            "had been released).",
            [target(staged(rate("millipede_stage_steps_total"), by="stage, outcome"),
                    "{{outcome}} stage {{stage}}")], unit="ops", w=8)
    b.row("Chunks")
    b.panel("Chunk size", "Prefill chunk sizes the planner chose.",
            [target(quantile(q, "millipede_chunk_tokens", by="mode"),
                    f"p{round(q * 100)} {{{{mode}}}}") for q in (0.1, 0.5, 0.9)], unit="short",
            w=8)
    b.panel("Chunks per second", "Prefill chunks planned per second, and their mean size.",
            [target(f"sum({rate('millipede_chunk_tokens_count')})", "chunks/s"),
             target(f"sum({rate('millipede_chunk_tokens_sum')}) / "
                    f"sum({rate('millipede_chunk_tokens_count')})", "mean tokens")],
            unit="short", w=8)
    b.panel("Planner target step time", "T* = t(0, max chunk): the step time the planner "
            "sizes every chunk to.",
            [target(f"max(millipede_planner_target_chunk_seconds{{{NS}}})", "T*")], unit="s",
            w=8)
    b.row("Activation transfers")
    b.panel("Transfer latency", "One activation transfer per step: send (copy + submit) and "
            "recv (waiting for the previous stage, its compute included).",
            [target(quantile(q, "millipede_activation_transfer_seconds", by="stage, direction",
                             staged=True), f"p{round(q * 100)} {{{{direction}}}} stage {{{{stage}}}}")
             for q in (0.5, 0.99)], unit="s", w=8)
    b.panel("Transfer bandwidth", "Bytes of activations sent to the next / received from the "
            "previous stage.",
            [target(staged(rate("millipede_activation_transfer_bytes_total"),
                           by="stage, direction"), "{{direction}} stage {{stage}}")],
            unit="Bps", w=8)
    b.panel("Stage prefill tokens", "Prompt tokens each stage ran through its layers.",
            [target(staged(rate("millipede_stage_prefill_tokens_total")), "stage {{stage}}")],
            unit="short", w=8)
    b.row("Scrape targets")
    b.panel("Targets up", "1 when Prometheus scrapes the process.",
            [target(f'up{{{NS}, job=~".*-(coordinator|prefill|decode)"}}', "{{job}} {{instance}}")],
            unit="short", minimum=0, maximum=1, w=24, h=6)
    return b


def memory():
    b = Board("millipede-memory", "Millipede / Memory",
              "KV cache blocks per stage and the coordinator's KV budget.")
    b.row("KV cache per stage")
    b.panel("KV blocks in use", "Blocks held by requests on each stage (the workers' view).",
            [target(staged("millipede_kv_blocks_in_use{" + NS + "}", agg="max"),
                    "in use stage {{stage}}"),
             target(staged("millipede_kv_blocks_capacity{" + NS + "}", agg="max"),
                    "capacity stage {{stage}}")], unit="short", minimum=0)
    b.panel("KV cache usage", "Fraction of each stage's KV blocks in use.",
            [target(staged("millipede_kv_cache_usage_ratio{" + NS + "}", agg="max"),
                    "stage {{stage}}")], unit="percentunit", minimum=0, maximum=1)
    b.panel("KV blocks in use (coordinator)", "Blocks in use each stage last reported with a "
            "step.",
            [target(f"max by (stage) (millipede_pipeline_stage_kv_blocks_in_use{{{NS}}})",
                    "stage {{stage}}")], unit="short", minimum=0)
    b.panel("Requests holding KV", "Requests whose KV each stage holds.",
            [target(staged("millipede_stage_requests_held{" + NS + "}", agg="max"),
                    "stage {{stage}}")], unit="short", minimum=0)
    b.panel("Sparse prefill workspace", "Device memory each stage set aside for the sparse "
            "prefill workspace (the largest chunk over the longest request; 0: dense prefill).",
            [target(staged("millipede_sparse_workspace_bytes{" + NS + "}", agg="max"),
                    "stage {{stage}}")], unit="bytes", minimum=0)
    b.row("KV budget (coordinator)")
    b.panel("KV budget", "KV tokens of the per-stage budget: total, and free for new requests.",
            [target(f"max by (kind) (millipede_kv_budget_tokens{{{NS}}})", "{{kind}}")],
            unit="short", minimum=0)
    b.panel("KV budget free", "Free share of the per-stage KV budget.",
            [target(f'min(millipede_kv_budget_tokens{{{NS}, kind="free"}}) / '
                    f'max(millipede_kv_budget_tokens{{{NS}, kind="total"}})', "free")],
            unit="percentunit", minimum=0, maximum=1)
    b.panel("Stage layers", "Layer range [layer_begin, layer_end) of each stage.",
            [target(f"max by (stage, layer_begin, layer_end) (millipede_stage_info{{{NS}}})",
                    "stage {{stage}}: layers {{layer_begin}}-{{layer_end}}")], kind="stat",
            w=24, h=4)
    return b


BOARDS = {"cluster-overview": overview, "pipeline-health": pipeline, "memory": memory}


def render():
    return {name: json.dumps(make().json(), indent=2) + "\n" for name, make in BOARDS.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when a file differs")
    args = ap.parse_args()
    stale = []
    for name, text in render().items():
        path = OUT / f"{name}.json"
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            OUT.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print("stale (run deploy/tools/make_dashboards.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
