#!/usr/bin/env python3
"""A real Prometheus (Debian's prometheus server) scrapes a `millipede local` cluster (2 stages
of tests/testdata/tiny_llama) while it serves requests, with the chart's alert rules loaded.
Then every PromQL expression of the dashboards and of the alert rules is executed through the
HTTP API and must return data: dashboard expressions at least one series with a finite value;
alert expressions, whose conditions are false in a healthy cluster, both sides of their
comparison. The shipped alerts stay quiet; copies with thresholds a healthy cluster crosses
fire, with their annotations expanded. promtool check metrics lints every live /metrics.

    MILLIPEDE_BIN=build/cli/millipede .venv-deploy/bin/python tests/deploy/prometheus_test.py
"""

import json
import math
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
import urllib.request

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import deploy_util as du  # noqa: E402

MODEL = du.ROOT / "tests" / "testdata" / "tiny_llama"  # 3 layers, vocab 512, context 4096
KV_TOKENS = 2048  # per stage: a 3000-token prompt is refused as overload
RATE_INTERVAL = "2m"
# Test copies of the alerts, with thresholds a healthy cluster serving requests crosses.
TUNED = {"prometheusRule": {"enabled": True, "alerts": {
    "ttftHigh": {"p99Seconds": 0.000001, "window": "1m", "for": "0s"},
    "rejectionsRising": {"count": 0, "window": "1m", "for": "0s"}}}}
TUNED_FIRING = {"MillipedeTimeToFirstTokenHigh", "MillipedeRequestsRejected"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def rules_of(values):
    objs = du.objects(du.render(values))
    (rule,) = [o for o in objs if o["kind"] == "PrometheusRule"]
    return rule["spec"]["groups"]


def split_top_level(expr):
    """The operands of the lowest-precedence top-level binary operator of a PromQL expression
    (or, then and/unless, then comparisons), with the vector-matching modifiers after the
    operator dropped; [expr] when there is none."""
    depth, quote, spans = 0, None, []
    i = 0
    while i < len(expr):
        ch = expr[i]
        if quote:
            if ch == "\\":
                i += 2
                continue
            if ch == quote:
                quote = None
        elif ch in "\"'`":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0:
            for op, rank in (("or", 0), ("and", 1), ("unless", 1), (">=", 2), ("<=", 2),
                             ("==", 2), ("!=", 2), (">", 2), ("<", 2)):
                if expr.startswith(op, i):
                    word = op.isalpha()
                    if word and (i > 0 and (expr[i - 1].isalnum() or expr[i - 1] == "_")
                                 or expr[i + len(op):i + len(op) + 1].isalnum()):
                        continue
                    spans.append((rank, i, len(op)))
                    i += len(op) - 1
                    break
        i += 1
    if not spans:
        return [expr.strip()]
    rank = min(r for r, _, _ in spans)
    _, at, n = [s for s in spans if s[0] == rank][0]
    right = expr[at + n:].strip()
    right = re.sub(r"^bool\s+", "", right)
    while True:  # on(...) / ignoring(...) / group_left(...) / group_right(...)
        m = re.match(r"^(on|ignoring|group_left|group_right)\s*(\([^)]*\))?\s*", right)
        if not m or not m.group(0):
            break
        right = right[m.end():]
    return split_top_level(expr[:at]) + split_top_level(right)


def is_number(expr):
    try:
        float(expr)
        return True
    except ValueError:
        return False


class PrometheusScrapesACluster(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.binary = du.millipede_bin()
        cls.prometheus = du.tool("prometheus")
        cls.promtool = du.tool("promtool")
        cls.tmp = tempfile.TemporaryDirectory()
        cls.dir = pathlib.Path(cls.tmp.name)
        cls.procs = []
        try:
            cls.start_cluster()
            cls.start_prometheus()
            cls.wait_for_targets()
            cls.serve_requests()
            cls.wait_for_rules()
        except BaseException:
            cls.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.stop()

    @classmethod
    def stop(cls):
        for p in reversed(cls.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(cls.procs):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)  # the group this test started
                p.wait()
        cls.procs = []
        cls.tmp.cleanup()

    @classmethod
    def spawn(cls, cmd, log):
        with open(cls.dir / log, "w") as out:
            p = subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        cls.procs.append(p)
        return p

    @classmethod
    def log(cls, name):
        return (cls.dir / name).read_text(errors="replace")

    @classmethod
    def start_cluster(cls):
        cls.coordinator_metrics = f"127.0.0.1:{free_port()}"
        ready = cls.dir / "ready"
        cls.cluster = cls.spawn(
            [cls.binary, "local", "--model", MODEL, "--stages", 2, "--listen", "127.0.0.1:0",
             "--metrics-listen", cls.coordinator_metrics, "--kv-tokens", KV_TOKENS,
             "--max-chunk", 512, "--ready-file", ready, "--startup-timeout", 120,
             "--drain-timeout", 2], "cluster.log")
        end = time.time() + 150
        while not (ready.exists() and ready.read_text().strip()):
            if cls.cluster.poll() is not None or time.time() > end:
                raise AssertionError("millipede local did not get ready:\n" +
                                     cls.log("cluster.log"))
            time.sleep(0.2)
        cls.address = ready.read_text().strip()
        cls.worker_metrics = re.findall(r"millipede worker \S+: serving on \S+, metrics on "
                                        r"(\S+),", cls.log("cluster.log"))
        if len(cls.worker_metrics) != 2:
            raise AssertionError("expected two workers' metrics addresses:\n" +
                                 cls.log("cluster.log"))

    @classmethod
    def start_prometheus(cls):
        # The shipped rules (default thresholds) and the tuned copies, renamed.
        shipped = rules_of({"prometheusRule": {"enabled": True}})
        tuned = rules_of(TUNED)
        for g in tuned:
            g["name"] += ".tuned"
            for r in g["rules"]:
                r["alert"] += "Tuned"
        cls.shipped_rules = shipped
        (cls.dir / "shipped.rules.yaml").write_text(du.yaml.safe_dump({"groups": shipped}))
        (cls.dir / "tuned.rules.yaml").write_text(du.yaml.safe_dump({"groups": tuned}))
        # Job names and labels as the chart's PodMonitor gives them in a cluster.
        def targets(addresses, component):
            return [{"targets": [a], "labels": {"namespace": du.NAMESPACE,
                                                "pod": f"{du.RELEASE}-{component}-{i}"}}
                    for i, a in enumerate(addresses)]
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                       "evaluation_interval": "1s"},
            "rule_files": ["shipped.rules.yaml", "tuned.rules.yaml"],
            "scrape_configs": [
                {"job_name": f"{du.RELEASE}-coordinator",
                 "static_configs": targets([cls.coordinator_metrics], "coordinator")},
                {"job_name": f"{du.RELEASE}-prefill",
                 "static_configs": targets(cls.worker_metrics, "prefill")},
            ],
        }
        (cls.dir / "prometheus.yml").write_text(du.yaml.safe_dump(config))
        check = du.run([cls.promtool, "check", "config", cls.dir / "prometheus.yml"])
        if check.returncode != 0:
            raise AssertionError(check.stdout + check.stderr)
        cls.api = f"http://127.0.0.1:{free_port()}"
        cls.prom = cls.spawn(
            [cls.prometheus, f"--config.file={cls.dir / 'prometheus.yml'}",
             f"--storage.tsdb.path={cls.dir / 'tsdb'}",
             f"--web.listen-address={cls.api[len('http://'):]}", "--log.level=warn"],
            "prometheus.log")
        end = time.time() + 60
        while True:
            try:
                if "Ready" in http_get(cls.api + "/-/ready"):
                    break
            except OSError:
                pass
            if cls.prom.poll() is not None or time.time() > end:
                raise AssertionError("prometheus did not start:\n" + cls.log("prometheus.log"))
            time.sleep(0.3)

    @classmethod
    def api_get(cls, path, **params):
        url = cls.api + path + ("?" + urllib.parse.urlencode(params, doseq=True) if params else "")
        body = json.loads(http_get(url, timeout=20))
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body}")
        return body["data"]

    @classmethod
    def wait_for_targets(cls):
        end = time.time() + 60
        while True:
            active = cls.api_get("/api/v1/targets")["activeTargets"]
            if len(active) == 3 and all(t["health"] == "up" for t in active):
                return
            if time.time() > end:
                raise AssertionError(f"targets not up: {json.dumps(active, indent=1)}")
            time.sleep(0.5)

    @classmethod
    def generate(cls, *args):
        return du.run([cls.binary, "generate", "--address", cls.address, "--quiet",
                       "--random-vocab", 500, *args], timeout=60)

    @classmethod
    def serve_requests(cls):
        cls.results = []
        for i, (prompt, new) in enumerate([(200, 8), (1500, 16), (700, 4), (1200, 32)]):
            r = cls.generate("--random-prompt", prompt, "--max-new-tokens", new, "--ignore-eos",
                             "--seed", i)
            cls.results.append(("ok", r))
            time.sleep(1.5)
        cls.results.append(("ok", cls.generate("--random-prompt", 900, "--prefill-only")))
        # Refused: longer than the context (invalid), more KV than a stage holds (overload).
        cls.results.append(("invalid", cls.generate("--random-prompt", 9000)))
        cls.results.append(("overload", cls.generate("--random-prompt", 3000)))
        time.sleep(1.5)
        cls.results.append(("ok", cls.generate("--random-prompt", 400, "--max-new-tokens", 8,
                                               "--ignore-eos")))
        time.sleep(4)  # a few more scrapes and rule evaluations

    @classmethod
    def wait_for_rules(cls):
        end = time.time() + 30
        while True:
            groups = cls.api_get("/api/v1/rules")["groups"]
            rules = [r for g in groups for r in g["rules"]]
            if rules and all(r.get("lastEvaluation", "").startswith("2") and
                             not r["lastEvaluation"].startswith("0001") for r in rules):
                return
            if time.time() > end:
                raise AssertionError(f"rules not evaluated: {json.dumps(groups, indent=1)}")
            time.sleep(0.5)

    def query(self, expr):
        return self.api_get("/api/v1/query", query=expr)

    # ---- checks ----------------------------------------------------------------------------

    def test_requests_were_served(self):
        for want, r in self.results:
            if want == "ok":
                self.assertEqual(r.returncode, 0, r.stderr)
            else:
                self.assertNotEqual(r.returncode, 0)
        self.assertIn("INVALID_ARGUMENT", self.results[5][1].stderr)
        self.assertIn("RESOURCE_EXHAUSTED", self.results[6][1].stderr)

    def test_promtool_check_metrics_on_every_live_scrape(self):
        for address in [self.coordinator_metrics] + self.worker_metrics:
            text = http_get(f"http://{address}/metrics")
            self.assertIn("millipede_build_info", text)
            r = du.run([self.promtool, "check", "metrics"], input=text)
            self.assertEqual(r.returncode, 0, f"{address}: {r.stdout}{r.stderr}")
            self.assertEqual((r.stdout + r.stderr).strip(), "", address)

    def test_workers_report_their_stage(self):
        res = self.query("millipede_stage_info")["result"]
        ranges = sorted((int(s["metric"]["stage"]), int(s["metric"]["layer_begin"]),
                         int(s["metric"]["layer_end"])) for s in res)
        self.assertEqual([r[0] for r in ranges], [0, 1])
        self.assertEqual(ranges[0][1], 0)
        self.assertEqual(ranges[0][2], ranges[1][1])
        self.assertEqual(ranges[1][2], 3)  # tiny_llama's layers, all of them

    def test_counters_saw_the_requests(self):
        def value(expr):
            (s,) = self.query(expr)["result"]
            return float(s["value"][1])
        self.assertEqual(value("millipede_requests_completed_total"), 6)
        self.assertEqual(value('millipede_requests_rejected_total{reason="invalid"}'), 1)
        self.assertEqual(value('millipede_requests_rejected_total{reason="overload"}'), 1)
        self.assertEqual(value("millipede_prompt_tokens_total"), 200 + 1500 + 700 + 1200 + 900
                         + 400)
        self.assertEqual(value("sum(millipede_stage_prefill_tokens_total)"),
                         2 * (200 + 1500 + 700 + 1200 + 900 + 400))

    def dashboard_expressions(self):
        out = []
        for path in sorted((du.CHART / "dashboards").glob("*.json")):
            board = json.loads(path.read_text())
            for v in board["templating"]["list"]:
                if v["type"] == "query":
                    out.append((path.name, f"variable {v['name']}", v["query"]["query"]))
            for p in board["panels"]:
                for t in p.get("targets", []):
                    out.append((path.name, f"{p['title']} / {t['legendFormat']}", t["expr"]))
        return out

    def test_every_dashboard_expression_returns_data(self):
        exprs = self.dashboard_expressions()
        self.assertGreater(len(exprs), 30)
        for board, where, expr in exprs:
            with self.subTest(board=board, panel=where):
                m = re.fullmatch(r"label_values\((\w+), (\w+)\)", expr)
                if m:  # a Grafana variable: the label's values among the metric's series
                    values = self.api_get(f"/api/v1/label/{m.group(2)}/values",
                                          **{"match[]": m.group(1)})
                    self.assertIn(du.NAMESPACE, values)
                    continue
                self.assertNotIn("$", expr.replace("$namespace", "").replace(
                    "$__rate_interval", ""), "unknown variable")
                q = expr.replace("$namespace", du.NAMESPACE).replace("$__rate_interval",
                                                                     RATE_INTERVAL)
                data = self.query(q)
                self.assertEqual(data["resultType"], "vector", q)
                self.assertTrue(data["result"], f"no series: {q}")
                finite = [s for s in data["result"] if math.isfinite(float(s["value"][1]))]
                self.assertTrue(finite, f"only NaN/Inf: {q} -> {data['result']}")

    def test_every_alert_expression_returns_data(self):
        n = 0
        for group in self.shipped_rules:
            for rule in group["rules"]:
                operands = split_top_level(rule["expr"])
                self.assertGreaterEqual(len(operands), 2, rule["expr"])
                for operand in operands:
                    if is_number(operand):
                        continue
                    with self.subTest(alert=rule["alert"], operand=operand):
                        data = self.query(operand)
                        self.assertTrue(data["result"], f"no series: {operand}")
                        n += 1
                # The whole expression evaluates (empty: the alert's condition is false).
                self.query(rule["expr"])
        self.assertGreaterEqual(n, 6)

    def test_rules_evaluate_and_only_the_tuned_alerts_fire(self):
        groups = self.api_get("/api/v1/rules")["groups"]
        self.assertEqual(len(groups), 2)
        for g in groups:
            for r in g["rules"]:
                self.assertEqual(r["health"], "ok", f"{r['name']}: {r.get('lastError')}")
        alerts = self.api_get("/api/v1/alerts")["alerts"]
        firing = {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}
        self.assertEqual(firing, {a + "Tuned" for a in TUNED_FIRING},
                         json.dumps(alerts, indent=1))
        for a in alerts:
            for k, text in a["annotations"].items():
                self.assertNotIn("error", text.lower(), f"{a['labels']['alertname']} {k}")
                self.assertNotIn("{{", text)
            if a["labels"]["alertname"] == "MillipedeRequestsRejectedTuned":
                self.assertEqual(a["labels"]["reason"], "overload")
                self.assertEqual(a["labels"]["namespace"], du.NAMESPACE)


class SplitTest(unittest.TestCase):
    def test_split(self):
        self.assertEqual(split_top_level('up{job=~"a|b"} == 0'), ['up{job=~"a|b"}', "0"])
        self.assertEqual(split_top_level("max by (x) (a{y!=\"1\"}) > bool 0.5"),
                         ['max by (x) (a{y!="1"})', "0.5"])
        self.assertEqual(split_top_level("a > 1 or b < on (i) group_left (s) c"),
                         ["a", "1", "b", "c"])
        self.assertEqual(split_top_level("sum(rate(x[5m]))"), ["sum(rate(x[5m]))"])
        self.assertEqual(split_top_level("histogram_quantile(0.9, sum by (le) (r)) > 600"),
                         ["histogram_quantile(0.9, sum by (le) (r))", "600"])


if __name__ == "__main__":
    sys.exit(du.main_guard(
        lambda: 0 if unittest.main(exit=False, verbosity=2).result.wasSuccessful() else 1))
