"""Helpers of the deploy tests: the tools (each missing one is an error naming how to install
it, never a skip), chart rendering with Helm's library, and schema validation of Kubernetes
objects (core kinds against the Kubernetes JSON schemas, Prometheus Operator kinds against the
operator's CRD models)."""

import os
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "millipede"
K8S = ROOT / "deploy" / "k8s"
VENV_BIN = pathlib.Path(sys.executable).parent
INSTALL = "run scripts/install_deps.sh (it installs Debian's prometheus and .venv-deploy)"
# Kubernetes versions the objects must validate against: the chart's minimum and the newest
# schema kubernetes-validate ships.
KUBE_VERSIONS = ("1.28.0", "1.37.0")
RELEASE = "millipede"
NAMESPACE = "millipede-test"


class MissingTool(RuntimeError):
    pass


def _import(module, package):
    try:
        return __import__(module)
    except ImportError as e:
        raise MissingTool(f"Python package {package} is missing ({e}); {INSTALL}") from e


helm = _import("helm_python", "helm-python-sdk")
kubernetes_validate = _import("kubernetes_validate", "kubernetes-validate")
yaml = _import("yaml", "PyYAML")


def tool(name):
    """Path of an executable: the deploy venv's first, then PATH."""
    venv = VENV_BIN / name
    if venv.exists():
        return str(venv)
    found = shutil.which(name)
    if not found:
        raise MissingTool(f"{name} is not installed; {INSTALL}")
    return found


def millipede_bin():
    path = os.environ.get("MILLIPEDE_BIN", "")
    if not path or not os.access(path, os.X_OK):
        raise MissingTool(f"MILLIPEDE_BIN={path!r} is not the millipede binary (build it: "
                          "ninja -C build millipede)")
    return path


def run(cmd, **kw):
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", 120)
    return subprocess.run([str(c) for c in cmd], **kw)


def ci_values_files():
    files = sorted((CHART / "ci").glob("*-values.yaml"))
    if not files:
        raise AssertionError(f"no {CHART}/ci/*-values.yaml")
    return files


def load_values(path):
    return helm.values_from_yaml(pathlib.Path(path).read_text()) if path else {}


def deep_merge(base, override):
    out = dict(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) \
            else v
    return out


def render(values=None, name=RELEASE, namespace=NAMESPACE):
    """template path -> rendered text (Helm's own engine, schema included)."""
    with helm.Chart.load(CHART) as chart:
        return chart.render(values=values or {}, name=name, namespace=namespace)


def objects(rendered):
    """Every Kubernetes object of a render (NOTES.txt left out), as dicts."""
    out = []
    for path in sorted(rendered):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(rendered[path]):
            if doc:
                out.append(doc)
    return out


def parse_stream(text):
    return [d for d in yaml.safe_load_all(text) if d]


_operator_models = None


def _operator():
    global _operator_models
    if _operator_models is None:
        try:
            from cloudcoil.models.prometheus_operator import v1
        except ImportError as e:
            raise MissingTool(f"cloudcoil-models-prometheus-operator is missing ({e}); "
                              f"{INSTALL}") from e
        _operator_models = v1
    return _operator_models


def _dropped(original, dumped, path=""):
    """Keys of `original` the model did not keep (unknown fields), and changed values."""
    problems = []
    if isinstance(original, dict):
        if not isinstance(dumped, dict):
            return [f"{path}: not an object"]
        for k, v in original.items():
            if k not in dumped:
                problems.append(f"{path}.{k}: unknown field")
            else:
                problems.extend(_dropped(v, dumped[k], f"{path}.{k}"))
    elif isinstance(original, list):
        if not isinstance(dumped, list) or len(dumped) != len(original):
            return [f"{path}: list changed"]
        for i, (a, b) in enumerate(zip(original, dumped)):
            problems.extend(_dropped(a, b, f"{path}[{i}]"))
    elif original != dumped and not (isinstance(original, (int, float)) and original == dumped):
        problems.append(f"{path}: {original!r} became {dumped!r}")
    return problems


def validate(obj):
    """Raises AssertionError naming the object and the problem when `obj` does not validate.

    Core kinds: kubernetes-validate, strict (unknown fields are errors), for every version of
    KUBE_VERSIONS. monitoring.coreos.com/v1 kinds: the pydantic models generated from the
    Prometheus Operator CRDs (types, enums, patterns, required fields), and unknown fields by
    comparing the object with what the model keeps."""
    what = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    if obj.get("apiVersion", "").startswith("monitoring.coreos.com/"):
        model = getattr(_operator(), obj["kind"], None)
        if model is None or obj["apiVersion"] != "monitoring.coreos.com/v1":
            raise AssertionError(f"{what}: no schema for {obj['apiVersion']} {obj['kind']}")
        try:
            parsed = model.model_validate(obj)
        except Exception as e:  # pydantic.ValidationError
            raise AssertionError(f"{what}: {e}") from None
        dumped = parsed.model_dump(by_alias=True, exclude_unset=True, mode="json")
        problems = _dropped(obj, dumped)
        if problems:
            raise AssertionError(f"{what}: " + "; ".join(problems))
        return
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            raise AssertionError(f"{what} (Kubernetes {version}): {path}: {e.message}") from None
        except kubernetes_validate.SchemaNotFoundError as e:
            raise AssertionError(f"{what}: no Kubernetes {version} schema: {e}") from None


def kustomize(directory):
    result = run([tool("kubectl"), "kustomize", directory])
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize {directory} failed:\n{result.stderr}")
    return parse_stream(result.stdout)


def main_guard(fn):
    """Runs fn(); a missing tool ends the test with exit code 1 and a message (no skip)."""
    try:
        return fn()
    except MissingTool as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
