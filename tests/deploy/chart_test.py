#!/usr/bin/env python3
"""The Helm chart, the kustomize manifests and the Dockerfile, checked offline with the real
tools: Helm's library (lint, render, values schema), the Kubernetes JSON schemas
(kubernetes-validate, strict), the Prometheus Operator CRD models, kubectl kustomize, promtool
(rules, and rule unit tests of every alert), hadolint, and the millipede binary itself (every
config file and MILLIPEDE_* variable the manifests give it must parse).

    .venv-deploy/bin/python tests/deploy/chart_test.py   (MILLIPEDE_BIN=build/cli/millipede)
"""

import copy
import json
import os
import pathlib
import re
import sys
import tempfile
import unittest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import deploy_util as du  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent


def value_sets():
    """(name, values) for the default values and every ci/*-values.yaml."""
    return [("default", {})] + [(f.name, du.load_values(f)) for f in du.ci_values_files()]


def by_kind(objs, kind, name=None):
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objs, kind, name):
    found = by_kind(objs, kind, name)
    if len(found) != 1:
        raise AssertionError(f"expected one {kind}/{name}, found {len(found)}: "
                             f"{[o['kind'] + '/' + o['metadata']['name'] for o in objs]}")
    return found[0]


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def pod_env(container, pod_name, namespace, ordinal):
    """The container's environment as the kubelet would set it (fieldRefs and $(VAR))."""
    env = {}
    for e in container.get("env", []):
        if "value" in e:
            value = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), e["value"])
        else:
            field = e["valueFrom"]["fieldRef"]["fieldPath"]
            value = {"metadata.name": pod_name, "metadata.namespace": namespace,
                     "metadata.labels['apps.kubernetes.io/pod-index']": str(ordinal)}[field]
        env[e["name"]] = value
    return env


class ChartLint(unittest.TestCase):
    def test_lint_is_clean_for_every_values_file(self):
        for name, values in value_sets():
            for kube in ("v1.28.0", "v1.33.0"):
                report = du.helm.lint(du.CHART, values, strict=True, kube_version=kube,
                                      namespace=du.NAMESPACE)
                bad = [m for m in report["messages"] if m["severity"] >= 2]
                self.assertEqual(report["errors"], [], f"{name} {kube}")
                self.assertEqual(bad, [], f"{name} {kube}: {bad}")

    def test_chart_metadata(self):
        with du.helm.Chart.load(du.CHART) as chart:
            meta = chart.metadata
            self.assertEqual(meta["apiVersion"], "v2")
            self.assertEqual(meta["name"], "millipede")
            self.assertRegex(meta["version"], r"^\d+\.\d+\.\d+")
            self.assertIsNotNone(chart.schema, "values.schema.json is missing")
            # The defaults pass the schema.
            chart.validate_schema(chart.values)


class RenderedObjects(unittest.TestCase):
    def test_every_object_validates(self):
        kinds_seen = set()
        for name, values in value_sets():
            objs = du.objects(du.render(values))
            self.assertGreater(len(objs), 5, name)
            for o in objs:
                with self.subTest(values=name, object=f"{o['kind']}/{o['metadata']['name']}"):
                    du.validate(o)
                    if "namespace" in o["metadata"]:  # only where the values ask for one
                        self.assertIn("-dashboard-", o["metadata"]["name"])
                kinds_seen.add(o["kind"])
        for kind in ("Deployment", "StatefulSet", "Service", "ConfigMap", "PodDisruptionBudget",
                     "ServiceAccount", "PersistentVolumeClaim", "ServiceMonitor", "PodMonitor",
                     "PrometheusRule"):
            self.assertIn(kind, kinds_seen, "no values file renders it")

    def test_validators_reject_broken_objects(self):
        # The checks above can fail: a string port, an unknown field, a bad CRD field.
        objs = du.objects(du.render({"monitoring": {"enabled": True},
                                     "prometheusRule": {"enabled": True}}))
        sts = copy.deepcopy(one(objs, "StatefulSet", "millipede-prefill"))
        sts["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "50052"
        with self.assertRaisesRegex(AssertionError, "containerPort"):
            du.validate(sts)
        sts = copy.deepcopy(one(objs, "StatefulSet", "millipede-prefill"))
        sts["spec"]["replica"] = 2
        with self.assertRaisesRegex(AssertionError, "replica"):
            du.validate(sts)
        pm = copy.deepcopy(one(objs, "PodMonitor", "millipede"))
        pm["spec"]["podMetricsEndpoints"][0]["interval"] = "15 seconds"
        with self.assertRaisesRegex(AssertionError, "interval"):
            du.validate(pm)
        pm = copy.deepcopy(one(objs, "PodMonitor", "millipede"))
        pm["spec"]["podMetricsEndpoint"] = []
        with self.assertRaisesRegex(AssertionError, "podMetricsEndpoint: unknown field"):
            du.validate(pm)
        rule = copy.deepcopy(one(objs, "PrometheusRule", "millipede"))
        rule["spec"]["groups"][0]["rules"][0]["expresion"] = "up"
        with self.assertRaisesRegex(AssertionError, "expresion: unknown field"):
            du.validate(rule)

    def test_structure_of_every_render(self):
        for name, values in value_sets():
            with self.subTest(values=name):
                self.check_structure(values, du.objects(du.render(values)))

    def check_structure(self, values, objs):
        with du.helm.Chart.load(du.CHART) as chart:
            v = chart.merge_values(values)
        fullname = du.RELEASE
        cm = one(objs, "ConfigMap", f"{fullname}-config")
        pods = {}
        # Coordinator: one replica, probes on grpc.health.v1, config from the ConfigMap.
        dep = one(objs, "Deployment", f"{fullname}-coordinator")
        self.assertEqual(dep["spec"]["replicas"], 1)
        self.assertEqual(dep["spec"]["strategy"]["type"], "Recreate")
        pods["coordinator"] = dep["spec"]["template"]
        c = dep["spec"]["template"]["spec"]["containers"][0]
        self.assertEqual(c["readinessProbe"]["grpc"], {"port": v["coordinator"]["port"],
                                                       "service": "millipede.v1.Coordinator"})
        self.assertEqual(c["livenessProbe"]["grpc"]["service"], "")
        self.assertGreater(dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
                           v["coordinator"]["drainTimeoutSeconds"])
        self.assertNotIn("nvidia.com/gpu", json.dumps(c.get("resources", {})))
        roles = ["prefill"] + (["decode"] if v["decode"]["enabled"] else [])
        self.assertEqual(len(by_kind(objs, "StatefulSet")), len(roles))
        for role in roles:
            rv = v[role]
            sts = one(objs, "StatefulSet", f"{fullname}-{role}")
            spec = sts["spec"]
            pods[role] = spec["template"]
            self.assertEqual(spec["replicas"], rv["stages"])
            self.assertEqual(spec["podManagementPolicy"], "Parallel")
            svc = one(objs, "Service", spec["serviceName"])
            self.assertEqual(svc["spec"]["clusterIP"], "None")
            self.assertTrue(svc["spec"]["publishNotReadyAddresses"])
            pod = spec["template"]["spec"]
            w = pod["containers"][0]
            env = {e["name"]: e for e in w["env"]}
            self.assertEqual(env["MILLIPEDE_STAGE_HINT"]["valueFrom"]["fieldRef"]["fieldPath"],
                             "metadata.labels['apps.kubernetes.io/pod-index']")
            self.assertIn(f".{spec['serviceName']}.$(POD_NAMESPACE).svc.",
                          env["MILLIPEDE_ADVERTISE"]["value"])
            limits = w["resources"].get("limits", {})
            if rv["gpusPerStage"]:
                self.assertEqual(limits["nvidia.com/gpu"], rv["gpusPerStage"])
                self.assertNotIn("nvidia.com/gpu", w["resources"].get("requests", {}))
            else:
                self.assertNotIn("nvidia.com/gpu", limits)
            self.assertEqual(w["readinessProbe"]["grpc"]["service"], "millipede.v1.StageWorker")
            self.assertEqual(w["startupProbe"]["grpc"]["service"], "millipede.v1.StageWorker")
            self.assertEqual(w["livenessProbe"]["grpc"]["service"], "")
            budget = w["startupProbe"]["periodSeconds"] * w["startupProbe"]["failureThreshold"]
            self.assertGreaterEqual(budget, 15 * 60, "startup budget below 15 min")
            self.assertEqual(pod.get("nodeSelector", {}), rv["nodeSelector"])
            self.assertEqual(pod.get("tolerations", []), rv["tolerations"])
            self.assertEqual(pod.get("affinity", {}), rv["affinity"])
            if rv["pdb"]["enabled"]:
                pdb = one(objs, "PodDisruptionBudget", f"{fullname}-{role}")
                self.assertEqual(pdb["spec"]["maxUnavailable"], rv["pdb"]["maxUnavailable"])
                self.assertTrue(matches(pdb["spec"]["selector"]["matchLabels"],
                                        spec["template"]["metadata"]["labels"]))
        # Every Service selects pods of one workload and targets ports they declare.
        for svc in by_kind(objs, "Service"):
            targets = [t for t in pods.values()
                       if matches(svc["spec"]["selector"], t["metadata"]["labels"])]
            self.assertEqual(len(targets), 1, svc["metadata"]["name"])
            ports = {p["name"] for p in targets[0]["spec"]["containers"][0]["ports"]}
            for p in svc["spec"]["ports"]:
                self.assertIn(p["targetPort"], ports, svc["metadata"]["name"])
        # Every --config file a container reads is in the ConfigMap; the model volume is
        # mounted where model.path points.
        for t in pods.values():
            c = t["spec"]["containers"][0]
            cfg = [a.split("=", 1)[1] for a in c["args"] if a.startswith("--config=")]
            self.assertEqual(len(cfg), 1)
            self.assertIn(os.path.basename(cfg[0]), cm["data"])
            mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
            if v["model"]["path"]:
                self.assertTrue(v["model"]["path"].startswith(mounts["model"] + "/"))
        for name, text in cm["data"].items():
            self.assertIsInstance(du.yaml.safe_load(text), dict, name)

    def test_operator_objects_are_tri_state(self):
        def kinds(values):
            return {o["kind"] for o in du.objects(du.render(values))}
        # null: only when the API is served; an offline render has no such API.
        self.assertFalse(kinds({}) & {"PodMonitor", "ServiceMonitor", "PrometheusRule"})
        self.assertTrue({"PodMonitor", "PrometheusRule"} <= kinds(
            {"monitoring": {"enabled": True}, "prometheusRule": {"enabled": True}}))
        self.assertIn("ServiceMonitor", kinds({"monitoring": {"enabled": True,
                                                              "kind": "ServiceMonitor"}}))
        self.assertFalse(kinds({"monitoring": {"enabled": False},
                                "prometheusRule": {"enabled": False}})
                         & {"PodMonitor", "ServiceMonitor", "PrometheusRule"})

    def test_monitors_select_the_pods_and_name_the_jobs(self):
        for kind in ("PodMonitor", "ServiceMonitor"):
            objs = du.objects(du.render({"monitoring": {"enabled": True, "kind": kind,
                                                        "additionalLabels": {"release": "kps"}},
                                         "decode": {"enabled": True}}))
            mon = one(objs, kind, du.RELEASE)
            self.assertEqual(mon["metadata"]["labels"]["release"], "kps")
            sel = mon["spec"]["selector"]["matchLabels"]
            if kind == "PodMonitor":
                targets = [o["spec"]["template"] for o in objs
                           if o["kind"] in ("Deployment", "StatefulSet")]
                endpoints = mon["spec"]["podMetricsEndpoints"]
            else:
                targets = by_kind(objs, "Service")
                endpoints = mon["spec"]["endpoints"]
            selected = [t for t in targets if matches(sel, t["metadata"]["labels"])]
            self.assertEqual(len(selected), 3, kind)  # coordinator, prefill, decode
            self.assertEqual(endpoints[0]["port"], "metrics")
            relabel = endpoints[0]["relabelings"][0]
            self.assertEqual(relabel["targetLabel"], "job")
            self.assertEqual(relabel["replacement"], f"{du.RELEASE}-$1")

    def test_dashboard_configmaps(self):
        objs = du.objects(du.render({"grafanaDashboards": {"namespace": "monitoring"}}))
        cms = [o for o in objs if o["kind"] == "ConfigMap" and "dashboard" in o["metadata"]["name"]]
        files = sorted((du.CHART / "dashboards").glob("*.json"))
        self.assertEqual(len(cms), len(files))
        self.assertGreaterEqual(len(files), 3)
        uids = set()
        for cm in cms:
            self.assertEqual(cm["metadata"]["labels"]["grafana_dashboard"], "1")
            self.assertEqual(cm["metadata"]["namespace"], "monitoring")
            (key, text), = cm["data"].items()
            self.assertEqual(text.rstrip("\n"), (du.CHART / "dashboards" / key).read_text()
                             .rstrip("\n"))
            board = json.loads(text)
            uids.add(board["uid"])
            panels = [p for p in board["panels"] if p["type"] != "row"]
            self.assertGreater(len(panels), 3, key)
            for p in panels:
                self.assertEqual(p["datasource"]["uid"], "${datasource}", p["title"])
                self.assertTrue(p["targets"], p["title"])
                for t in p["targets"]:
                    self.assertIn("millipede_" if "up{" not in t["expr"] else "up{", t["expr"])
        self.assertEqual(len(uids), len(cms))
        self.assertFalse(any("dashboard" in o["metadata"]["name"] for o in du.objects(
            du.render({"grafanaDashboards": {"enabled": False}}))))

    def test_dashboards_are_generated(self):
        r = du.run([sys.executable, du.ROOT / "deploy" / "tools" / "make_dashboards.py",
                    "--check"])
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_notes_say_how_to_submit_a_request(self):
        notes = du.render({})["millipede/templates/NOTES.txt"]
        self.assertIn(f"port-forward svc/{du.RELEASE}-coordinator 50051:50051", notes)
        self.assertIn("millipede generate --address localhost:50051", notes)
        self.assertIn("millipede.v1.Coordinator/Generate", notes)
        decode = du.render({"decode": {"enabled": True}})["millipede/templates/NOTES.txt"]
        self.assertIn("refuse --role decode", decode)


class Values(unittest.TestCase):
    IMPOSSIBLE = [
        ({"prefill": {"stages": 29}}, "prefill.stages is 29 but the model has 28 layers"),
        ({"model": {"preset": "qwen2.5-14b-instruct-1m"}, "prefill": {"stages": 49}},
         "the model has 48 layers"),
        ({"model": {"preset": "", "path": "/models/m", "numLayers": 3,
                    "volume": {"type": "existingClaim", "existingClaim": "c"}},
          "prefill": {"stages": 4}}, "prefill.stages is 4 but the model has 3 layers"),
        ({"prefill": {"gpusPerStage": 0}}, "device is cuda but prefill.gpusPerStage is 0"),
        ({"decode": {"enabled": True, "gpusPerStage": 0}},
         "device is cuda but decode.gpusPerStage is 0"),
        ({"device": "cpu", "prefill": {"gpusPerStage": 0, "memoryBytes": 0}},
         "transport is nccl but device is cpu"),
        ({"device": "cpu", "transport": "ucx"}, "device is cpu but prefill.gpusPerStage is 1"),
        ({"prefill": {"gpusPerStage": 2}}, "a stage drives one GPU"),
        ({"prefill": {"memoryBytes": 0}}, "cannot size the KV budget"),
        ({"prefill": {"resources": {"requests": {"nvidia.com/gpu": 2}}}},
         "must equal prefill.gpusPerStage"),
        ({"model": {"path": "/models/m"}}, "model.preset (qwen2.5-7b-instruct-1m) and model.path"),
        ({"model": {"preset": ""}}, "set model.preset (random weights) or model.path"),
        ({"model": {"preset": "", "path": "/models/m"}}, "needs a model volume"),
        ({"model": {"preset": "", "path": "/data/m", "volume": {"type": "hostPath",
                                                                 "hostPath": {"path": "/d"}}}},
         "is not on the model volume"),
        ({"model": {"preset": "", "path": "/models/m", "volume": {"type": "existingClaim"}}},
         "set model.volume.existingClaim"),
        ({"model": {"preset": "", "path": "/models/m", "volume": {"type": "hostPath"}}},
         "set model.volume.hostPath.path"),
        ({"ucxTransports": "tcp"}, "they apply to transport ucx only"),
        ({"coordinator": {"chunks": {"minChunk": 65536}}}, "minChunk 65536 is above maxChunk"),
        ({"model": {"maxContext": 16384}}, "maxChunk 32768 is above model.maxContext 16384"),
        ({"workers": {"metricsPort": 50052}}, "workers.port and workers.metricsPort"),
    ]
    SCHEMA = [
        ({"prefill": {"stages": 0}}, "/prefill/stages"),
        ({"prefill": {"stages": "2"}}, "/prefill/stages"),
        ({"device": "tpu"}, "/device"),
        ({"transport": "tcp"}, "/transport"),
        ({"model": {"preset": "qwen-7b"}}, "/model/preset"),
        ({"replicaCount": 2}, "replicaCount"),
        ({"prefill": {"enabled": False}}, "enabled"),
        ({"coordinator": {"port": 70000}}, "/coordinator/port"),
        ({"monitoring": {"kind": "Probe"}}, "/monitoring/kind"),
        ({"monitoring": {"enabled": "yes"}}, "/monitoring/enabled"),
        ({"prometheusRule": {"alerts": {"kvNearlyFull": {"ratio": 1.5}}}}, "ratio"),
        ({"prometheusRule": {"alerts": {"ttftHigh": {"window": "30 minutes"}}}}, "window"),
        ({"model": {"volume": {"type": "nfs"}}}, "/model/volume/type"),
        ({"model": {"path": "models/m"}}, "/model/path"),
    ]

    def test_impossible_combinations_fail_with_a_message(self):
        for values, message in self.IMPOSSIBLE:
            with self.subTest(values=values):
                with self.assertRaises(du.helm.HelmRenderError) as e:
                    du.render(values)
                self.assertIn(message, str(e.exception))
        # (Helm 4's lint renders `fail` leniently and only logs it; install, upgrade and
        # template stop as render() does here.)

    def test_schema_rejects_bad_values(self):
        for values, where in self.SCHEMA:
            with self.subTest(values=values):
                with self.assertRaises(du.helm.HelmValuesError) as e:
                    du.render(values)
                self.assertIn(where, str(e.exception))

    def test_ci_values_files_pass_the_schema(self):
        with du.helm.Chart.load(du.CHART) as chart:
            for f in du.ci_values_files():
                chart.validate_schema(chart.merge_values(du.load_values(f)))


class BinaryAcceptsTheConfig(unittest.TestCase):
    """Every container of every render runs `millipede <its args> --print-config` with the
    environment its pod would have: config keys, flag values and MILLIPEDE_* names must all be
    the binary's, and the env values must reach the effective configuration."""

    def check_workloads(self, objs, config_files, label):
        binary = du.millipede_bin()
        with tempfile.TemporaryDirectory() as tmp:
            for key, text in config_files.items():
                pathlib.Path(tmp, key).write_text(text)
            for o in objs:
                if o["kind"] not in ("Deployment", "StatefulSet"):
                    continue
                template = o["spec"]["template"]
                replicas = o["spec"].get("replicas", 1)
                for ordinal in sorted({0, replicas - 1}):
                    pod = f"{o['metadata']['name']}-{ordinal}"
                    c = template["spec"]["containers"][0]
                    env = pod_env(c, pod, du.NAMESPACE, ordinal)
                    args = [a.replace("/etc/millipede/", tmp + "/") for a in c["args"]]
                    with self.subTest(source=label, pod=pod):
                        r = du.run([binary, *args, "--print-config"],
                                   env={"PATH": os.environ.get("PATH", ""), **env})
                        self.assertEqual(r.returncode, 0, f"{args}: {r.stderr}")
                        effective = du.yaml.safe_load(r.stdout)
                        for name, value in env.items():
                            if not name.startswith("MILLIPEDE_"):
                                continue
                            option = name[len("MILLIPEDE_"):].lower().replace("_", "-")
                            self.assertIn(option, effective, f"{name} names no option")
                            self.assertEqual(str(effective[option]), value, name)
                        if o["kind"] == "StatefulSet":
                            self.assertEqual(effective["stage-hint"], ordinal)
                            self.assertEqual(effective["worker-id"], pod)
                        r = du.run([binary, *args, "--check-config"],
                                   env={"PATH": os.environ.get("PATH", ""), **env})
                        if effective.get("model", "") == "" or o["kind"] == "StatefulSet":
                            self.assertEqual(r.returncode, 0, f"{args}: {r.stderr}")
                            self.assertIn("configuration OK", r.stdout)

    def test_chart_renders(self):
        for name, values in value_sets():
            objs = du.objects(du.render(values))
            cm = one(objs, "ConfigMap", f"{du.RELEASE}-config")
            self.check_workloads(objs, cm["data"], name)
            coordinator = du.yaml.safe_load(cm["data"]["coordinator.yaml"])
            with du.helm.Chart.load(du.CHART) as chart:
                v = chart.merge_values(values)
            self.assertEqual(coordinator["stages"], v["prefill"]["stages"])
            self.assertEqual(coordinator["device"], v["device"])
            self.assertEqual(coordinator["transport"], v["transport"])

    def test_kustomize_overlay(self):
        for d in [du.K8S / "base"] + sorted((du.K8S / "overlays").iterdir()):
            objs = du.kustomize(d)
            cms = [o for o in objs if o["kind"] == "ConfigMap"
                   and o["metadata"]["name"].startswith("millipede-config")]
            self.assertEqual(len(cms), 1)
            self.check_workloads(objs, cms[0]["data"], d.name)


class Kustomize(unittest.TestCase):
    def test_base_is_what_the_chart_renders(self):
        r = du.run([sys.executable, du.ROOT / "deploy" / "tools" / "render_k8s_base.py",
                    "--check"])
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_every_output_validates(self):
        dirs = [du.K8S / "base"] + sorted((du.K8S / "overlays").iterdir())
        self.assertGreaterEqual(len(dirs), 2)
        for d in dirs:
            objs = du.kustomize(d)
            self.assertGreater(len(objs), 5)
            for o in objs:
                with self.subTest(dir=d.name, object=f"{o['kind']}/{o['metadata']['name']}"):
                    du.validate(o)
                    self.assertNotIn("helm.sh/chart", o["metadata"].get("labels", {}))

    def test_overlay(self):
        objs = du.kustomize(du.K8S / "overlays" / "qwen14b-h200")
        for o in objs:
            if o["kind"] != "Namespace":
                self.assertEqual(o["metadata"].get("namespace"), "millipede", o["kind"])
        sts = one(objs, "StatefulSet", "millipede-prefill")
        self.assertEqual(sts["spec"]["replicas"], 4)
        dep = one(objs, "Deployment", "millipede-coordinator")
        env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]
               ["env"]}
        self.assertEqual(env["MILLIPEDE_STAGES"], "4")  # the stage count agrees
        cm = [o for o in objs if o["kind"] == "ConfigMap"
              and o["metadata"]["name"].startswith("millipede-config-")]
        self.assertEqual(len(cm), 1, "the config ConfigMap carries a content hash")
        volumes = dep["spec"]["template"]["spec"]["volumes"]
        self.assertIn(cm[0]["metadata"]["name"], [v.get("configMap", {}).get("name")
                                                 for v in volumes])
        for o in (sts, dep):
            image = o["spec"]["template"]["spec"]["containers"][0]["image"]
            self.assertEqual(image, "registry.example.com/ml/millipede:0.1.0")
        kinds = {o["kind"] for o in objs}
        self.assertTrue({"PodMonitor", "PrometheusRule"} <= kinds)
        self.assertEqual(len([o for o in objs if o["kind"] == "ConfigMap"
                              and o["metadata"].get("labels", {}).get("grafana_dashboard")]), 3)
        for o in objs:
            if o["kind"] in ("PodMonitor", "PrometheusRule"):
                self.assertEqual(o["metadata"]["labels"]["release"], "kube-prometheus-stack")


class Rules(unittest.TestCase):
    def rules_files(self, tmp):
        """The PrometheusRule groups of the chart (with ci/monitoring-values.yaml and the
        defaults) and of the kustomize component, as promtool rule files."""
        out = []
        sources = [("chart-defaults", du.objects(du.render({"prometheusRule": {"enabled": True}}))),
                   ("chart-monitoring", du.objects(du.render(
                       du.load_values(du.CHART / "ci" / "monitoring-values.yaml")))),
                   ("kustomize", du.kustomize(du.K8S / "overlays" / "qwen14b-h200"))]
        for name, objs in sources:
            rule = [o for o in objs if o["kind"] == "PrometheusRule"]
            self.assertEqual(len(rule), 1, name)
            path = pathlib.Path(tmp, f"{name}.rules.yaml")
            path.write_text(du.yaml.safe_dump({"groups": rule[0]["spec"]["groups"]}))
            out.append(path)
        return out

    def test_promtool_check_rules(self):
        with tempfile.TemporaryDirectory() as tmp:
            for path in self.rules_files(tmp):
                r = du.run([du.tool("promtool"), "check", "rules", path])
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
                self.assertIn("SUCCESS: 6 rules found", r.stdout)

    def test_alerts_fire_when_they_should(self):
        # promtool test rules: synthetic series through the chart's default rules
        # (tests/deploy/alerts_test.yaml says which alert fires when).
        with tempfile.TemporaryDirectory() as tmp:
            objs = du.objects(du.render({"prometheusRule": {"enabled": True}}))
            rule = one(objs, "PrometheusRule", du.RELEASE)
            groups = copy.deepcopy(rule["spec"]["groups"])
            for g in groups:  # the annotations' templates are checked by check rules
                for r in g["rules"]:
                    r.pop("annotations", None)
            pathlib.Path(tmp, "millipede.rules.yaml").write_text(
                du.yaml.safe_dump({"groups": groups}))
            test = pathlib.Path(tmp, "alerts_test.yaml")
            test.write_text((HERE / "alerts_test.yaml").read_text())
            r = du.run([du.tool("promtool"), "test", "rules", test])
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn("SUCCESS", r.stdout)


class Dockerfile(unittest.TestCase):
    def test_hadolint(self):
        dockerfile = du.ROOT / "deploy" / "Dockerfile"
        r = du.run([du.tool("hadolint"), "--failure-threshold", "info", dockerfile])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_one_image_on_the_cuda_runtime(self):
        text = (du.ROOT / "deploy" / "Dockerfile").read_text()
        stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
        self.assertEqual(len(stages), 2)
        self.assertRegex(stages[0], r"^nvidia/cuda:\$\{CUDA_VERSION\}-devel-")
        self.assertRegex(stages[-1], r"^nvidia/cuda:\$\{CUDA_VERSION\}-runtime-")
        self.assertIn('ENTRYPOINT ["/usr/local/bin/millipede"]', text)
        with du.helm.Chart.load(du.CHART) as chart:
            v = chart.values
        exposed = {int(p) for p in re.findall(r"^EXPOSE\s+(.+)$", text, re.M)[0].split()}
        self.assertEqual(exposed, {v["coordinator"]["port"], v["coordinator"]["metricsPort"],
                                   v["workers"]["port"], v["workers"]["metricsPort"]})
        ignore = (du.ROOT / "deploy" / "Dockerfile.dockerignore").read_text().split()
        for path in ("build", ".venv", ".git"):
            self.assertIn(path, ignore)


if __name__ == "__main__":
    sys.exit(du.main_guard(
        lambda: 0 if unittest.main(exit=False, verbosity=2).result.wasSuccessful() else 1))
