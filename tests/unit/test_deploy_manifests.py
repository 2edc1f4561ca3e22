"""The deployment files under deploy/.

Every Kubernetes manifest is checked against the Kubernetes JSON schemas that ``kubernetes-validate`` bundles, and
``compose.yaml`` against the Compose specification's schema that ``check-jsonschema`` bundles: both offline. Then
the facts a schema cannot see. Each fact is a ``*_problems`` function that lists what is wrong; the tests run it on
the files as they are (no problem) and, in ``test_a_broken_copy_is_caught``, on copies broken on purpose (the
problem named).
"""

from __future__ import annotations

import copy
import functools
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml
from check_jsonschema.builtin_schemas import get_builtin_schema

from services.cli.embedded import free_port, nats_server_binary
from shared.subjects import SERVICES

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PROBE = DEPLOY / "probes" / "nats_connected.py"
#: The oldest Kubernetes the manifests are written for, and the newest whose schemas the package bundles.
K8S_VERSIONS = ("1.29", kubernetes_validate.utils.latest_version())
PART_OF = "app.kubernetes.io/part-of"
PRIVATE_KEY, PUBLIC_KEY = "TUNEFLEET_SECRETS_PRIVATE_KEY", "TUNEFLEET_SECRETS_PUBLIC_KEY"
PRIVATE_SECRET, PUBLIC_SECRET = "tunefleet-sealing-private", "tunefleet-sealing-public"
PUBLIC_URLS = ("TUNEFLEET_GATEWAY_PUBLIC_URL", "TUNEFLEET_INGEST_PUBLIC_URL")
#: What compose's variables are set to in these tests (the ones it requires, and none of the optional ones).
COMPOSE_ENV = {"NATS_PASSWORD": "n" * 8, "POSTGRES_PASSWORD": "p" * 8, "TUNEFLEET_SECRET_KEY": "k" * 48,
               "MINIO_ROOT_PASSWORD": "m" * 8, PUBLIC_KEY: "pub", PRIVATE_KEY: "priv"}


def kube_name(service: str) -> str:
    return service.replace("_", "-")


def is_provider(name: str) -> bool:
    return name.startswith("provider-")


# ---- loading ------------------------------------------------------------------------------------------------------

def load_yaml_docs(path: Path) -> list[dict]:
    return copy.deepcopy(_load_yaml_docs(path))


@functools.cache
def _load_yaml_docs(path: Path) -> list[dict]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return [doc for doc in yaml.load_all(path.read_text(), Loader=loader) if doc is not None]


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def applied_docs() -> list[dict]:
    """What ``kubectl apply -k deploy/k8s`` applies, read from the files it lists."""
    return [doc for name in kustomization()["resources"] for doc in load_yaml_docs(K8S / name)]


def example_secrets() -> list[dict]:
    return load_yaml_docs(K8S / "examples" / "secrets.yaml")


def of_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def pod_specs(docs: list[dict]) -> dict[str, dict]:
    """Every pod template's spec, by its workload's name."""
    return {doc["metadata"]["name"]: doc["spec"]["template"]["spec"] for doc in docs
            if doc["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet")}


def pod_labels(docs: list[dict]) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc["spec"]["template"]["metadata"].get("labels", {}) for doc in docs
            if doc["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet")}


def container_env(container: dict, configmaps: dict[str, dict]) -> dict[str, object]:
    """A container's environment as the kubelet builds it: ConfigMaps of envFrom first, then env (values, or the
    valueFrom that sets them)."""
    env: dict[str, object] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(configmaps[source["configMapRef"]["name"]].get("data", {}))
    for var in container.get("env", []):
        env[var["name"]] = var.get("value", var.get("valueFrom"))
    return env


def secret_refs(spec: dict) -> list[tuple[str, str | None, bool]]:
    """(Secret, key or None for all of it, optional) for every Secret a pod spec reads."""
    refs = []
    for container in spec.get("containers", []) + spec.get("initContainers", []):
        for var in container.get("env", []):
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                refs.append((ref["name"], ref["key"], bool(ref.get("optional"))))
        refs += [(s["secretRef"]["name"], None, bool(s["secretRef"].get("optional")))
                 for s in container.get("envFrom", []) if "secretRef" in s]
    for volume in spec.get("volumes", []):
        if "secret" in volume:
            refs.append((volume["secret"]["secretName"], None, bool(volume["secret"].get("optional"))))
        for source in volume.get("projected", {}).get("sources", []):
            if "secret" in source:
                refs.append((source["secret"]["name"], None, bool(source["secret"].get("optional"))))
    return refs


def env_names(spec: dict) -> set[str]:
    containers = spec.get("containers", []) + spec.get("initContainers", [])
    return {var["name"] for container in containers for var in container.get("env", [])}


def selects(selector: dict, labels: dict) -> bool:
    """Whether a Kubernetes label selector selects a pod with ``labels``."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        if ((operator == "In" and labels.get(key) not in values) or (operator == "NotIn" and labels.get(key) in values)
                or (operator == "Exists" and key not in labels) or (operator == "DoesNotExist" and key in labels)):
            return False
    return True


# ---- the facts ----------------------------------------------------------------------------------------------------

def schema_problems(doc: dict, version: str) -> list[str]:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{doc['kind']}/{doc['metadata']['name']} (Kubernetes {version}) at {exc.json_path}: {exc.message}"]
    return []


def service_problems(docs: list[dict]) -> list[str]:
    """Each TuneFleet service is a Deployment that starts it, with probes and resources on every container."""
    deployments = of_kind(docs, "Deployment")
    problems = [f"no Deployment {kube_name(s)}" for s in SERVICES if kube_name(s) not in deployments]
    for name, deployment in deployments.items():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            where = f"{name}/{container['name']}"
            service = name.replace("-", "_")
            if service in SERVICES and container.get("command") != ["python", "-m", f"services.{service}"]:
                problems.append(f"{where} does not start with python -m services.{service}")
            problems += [f"{where} has no {p}" for p in ("livenessProbe", "readinessProbe") if p not in container]
            resources = container.get("resources", {})
            problems += [f"{where} has no resources.{part}.{what}" for part in ("requests", "limits")
                         for what in ("cpu", "memory") if what not in resources.get(part, {})]
            ports = {p.get("name") for p in container.get("ports", [])} | {p["containerPort"]
                                                                            for p in container.get("ports", [])}
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                http = container.get(probe, {}).get("httpGet")
                if http and http["port"] not in ports:
                    problems.append(f"{where} {probe} calls port {http['port']!r}, which it does not declare")
                command = container.get(probe, {}).get("exec", {}).get("command", [])
                scripts = [arg for arg in command if arg.startswith("/app/")]
                problems += [f"{where} {probe} runs {s}, which is not in the repository"
                             for s in scripts if not (ROOT / s.removeprefix("/app/")).is_file()]
    return problems


def private_key_problems(docs: list[dict]) -> list[str]:
    """The private sealing key opens users' stored credentials: in provider pods and no other; the public one
    seals them: in the gateway and no other."""
    problems = []
    for name, spec in pod_specs(docs).items():
        has_private = PRIVATE_KEY in env_names(spec) or any(ref[0] == PRIVATE_SECRET for ref in secret_refs(spec))
        has_public = PUBLIC_KEY in env_names(spec) or any(ref[0] == PUBLIC_SECRET for ref in secret_refs(spec))
        if has_private != is_provider(name):
            problems.append(f"{name} {'has' if has_private else 'lacks'} the private sealing key")
        if has_public != (name == "gateway"):
            problems.append(f"{name} {'has' if has_public else 'lacks'} the public sealing key")
    return problems


def secret_problems(docs: list[dict], secrets: list[dict]) -> list[str]:
    """Every Secret a pod reads (unless optional) is one examples/secrets.yaml describes, with that key."""
    known = {s["metadata"]["name"]: set(s.get("stringData", {})) | set(s.get("data", {})) for s in secrets}
    problems = []
    for name, spec in pod_specs(docs).items():
        for secret, key, optional in secret_refs(spec):
            if optional:
                continue
            if secret not in known:
                problems.append(f"{name} reads Secret {secret}, which examples/secrets.yaml does not describe")
            elif key is not None and key not in known[secret]:
                problems.append(f"{name} reads key {key} of Secret {secret}, which has none")
    return problems


def network_policy_problems(docs: list[dict]) -> list[str]:
    """NATS (4222) and PostgreSQL (5432) take connections from TuneFleet's pods in this namespace only, and from
    every one of them that needs it; NATS servers also from each other (6222)."""
    labels, policies, stateful = pod_labels(docs), of_kind(docs, "NetworkPolicy"), of_kind(docs, "StatefulSet")
    services = [name for name in of_kind(docs, "Deployment") if name.replace("-", "_") in SERVICES]
    clients = {"nats": (4222, services), "postgres": (5432, [*services, *of_kind(docs, "Job")])}
    problems = []
    for server, (port, needing) in clients.items():
        if server not in stateful:
            problems.append(f"no StatefulSet {server}")
            continue
        guarding = [p for p in policies.values() if selects(p["spec"]["podSelector"], labels[server])
                    and "Ingress" in p["spec"].get("policyTypes", [])]
        if not guarding:
            problems.append(f"no NetworkPolicy selects the {server} pods")
        for policy in guarding:
            for rule in policy["spec"].get("ingress", []):
                peers = rule.get("from")
                if not peers:
                    problems.append(f"NetworkPolicy {policy['metadata']['name']} lets any source in")
                for peer in peers or []:
                    required = peer.get("podSelector", {}).get("matchLabels", {}).get(PART_OF)
                    if set(peer) != {"podSelector"} or required != "tunefleet":
                        problems.append(f"NetworkPolicy {policy['metadata']['name']} lets in {peer}, not only "
                                        "TuneFleet pods of this namespace")
        allowed = {name for name in needing
                   for policy in guarding for rule in policy["spec"].get("ingress", [])
                   if any(p.get("port") == port for p in rule.get("ports", []))
                   and any(selects(peer.get("podSelector", {}), labels[name]) for peer in rule.get("from", []))}
        problems += [f"{name} cannot reach {server}:{port}" for name in needing if name not in allowed]
    return problems


def nats_problems(docs: list[dict]) -> list[str]:
    """A StatefulSet of three JetStream servers routed to each other through a headless Service."""
    nats = of_kind(docs, "StatefulSet").get("nats")
    if nats is None:
        return ["no StatefulSet nats"]
    spec, problems = nats["spec"], []
    if spec.get("replicas") != 3:
        problems.append(f"the NATS StatefulSet has {spec.get('replicas')} replicas, not 3")
    headless = of_kind(docs, "Service").get(spec["serviceName"])
    if headless is None or headless["spec"].get("clusterIP") != "None":
        problems.append(f"the NATS StatefulSet's serviceName {spec['serviceName']} is not a headless Service")
    elif not selects({"matchLabels": headless["spec"]["selector"]}, spec["template"]["metadata"]["labels"]):
        problems.append("the headless Service does not select the NATS pods")
    config = "\n".join(data for cm in of_kind(docs, "ConfigMap").values() if cm["metadata"]["name"].startswith("nats")
                       for data in cm.get("data", {}).values())
    routes = {f"nats://{nats['metadata']['name']}-{i}.{spec['serviceName']}:6222" for i in range(3)}
    problems += [f"the NATS config does not route to {r}" for r in sorted(routes) if r not in config]
    problems += [f"the NATS config has no {block} block" for block in ("jetstream {", "cluster {")
                 if block not in config]
    return problems


def autoscaling_problems(docs: list[dict]) -> list[str]:
    deployments, problems = of_kind(docs, "Deployment"), []
    targets = {h["spec"]["scaleTargetRef"]["name"]: h for h in of_kind(docs, "HorizontalPodAutoscaler").values()}
    for name in ("gateway", "metrics-ingest"):
        if name not in targets:
            problems.append(f"no HorizontalPodAutoscaler scales {name}")
        elif name not in deployments:
            problems.append(f"the HorizontalPodAutoscaler of {name} scales no Deployment")
        elif "replicas" in deployments[name]["spec"]:
            problems.append(f"Deployment {name} sets replicas, which every apply would reset under its autoscaler")
    return problems


def ingress_problems(docs: list[dict]) -> list[str]:
    """The public URLs the pods are given are the Ingress's hosts, each routed to the right Service and port."""
    config = of_kind(docs, "ConfigMap")["tunefleet"]["data"]
    services, deployments = of_kind(docs, "Service"), of_kind(docs, "Deployment")
    rules = {rule["host"]: (ingress, rule) for ingress in of_kind(docs, "Ingress").values()
             for rule in ingress["spec"]["rules"]}
    problems = []
    for variable, service in zip(PUBLIC_URLS, ("gateway", "metrics-ingest"), strict=True):
        url = httpx.URL(config.get(variable, ""))
        if url.scheme != "https" or url.host not in rules:
            problems.append(f"{variable} {config.get(variable)!r} is not an https URL of an Ingress host")
            continue
        ingress, rule = rules[url.host]
        if not any(url.host in tls.get("hosts", []) for tls in ingress["spec"].get("tls", [])):
            problems.append(f"Ingress {ingress['metadata']['name']} has no TLS for {url.host}")
        root = [p for p in rule["http"]["paths"] if p["path"] == "/"]
        backend = root[0]["backend"]["service"] if root else {}
        if backend.get("name") != service:
            problems.append(f"{url.host}/ goes to {backend.get('name')}, not to {service}")
            continue
        port = next(p for p in services[service]["spec"]["ports"]
                    if p.get("name") == backend["port"].get("name") or p["port"] == backend["port"].get("number"))
        container = deployments[service]["spec"]["template"]["spec"]["containers"][0]
        if not any(port["targetPort"] in (p.get("name"), p["containerPort"]) for p in container["ports"]):
            problems.append(f"Service {service} sends {url.host} to a port its pods do not serve")
    return problems


def url_problems(docs: list[dict]) -> list[str]:
    """The gateway and the providers (which hand workloads their call-back URLs) have both public URLs; the local
    provider may give its own trainers a nearer ingest."""
    configmaps, problems = of_kind(docs, "ConfigMap"), []
    public = configmaps["tunefleet"]["data"]
    for name, deployment in of_kind(docs, "Deployment").items():
        if name != "gateway" and not is_provider(name):
            continue
        env = container_env(deployment["spec"]["template"]["spec"]["containers"][0], configmaps)
        for variable in PUBLIC_URLS:
            if name == "provider-local" and variable == "TUNEFLEET_INGEST_PUBLIC_URL" and env.get(variable):
                continue
            if env.get(variable) != public.get(variable):
                problems.append(f"{name} has {variable}={env.get(variable)!r}, not the public {public.get(variable)!r}")
    return problems


def storage_problems(docs: list[dict]) -> list[str]:
    """Object storage is S3, named in the ConfigMap, with credentials from a Secret where files are handled."""
    config = of_kind(docs, "ConfigMap")["tunefleet"]["data"]
    problems = [f"the ConfigMap has no {v}" for v in ("TUNEFLEET_S3_ENDPOINT_URL", "TUNEFLEET_S3_BUCKET",
                                                      "TUNEFLEET_S3_REGION") if not config.get(v)]
    if config.get("TUNEFLEET_STORAGE_BACKEND") != "s3":
        problems.append("TUNEFLEET_STORAGE_BACKEND is not s3")
    for name, spec in pod_specs(docs).items():
        if name == "gateway" or is_provider(name):
            refs = {(secret, key) for secret, key, _ in secret_refs(spec)}
            problems += [f"{name} has no {var} from the tunefleet-s3 Secret"
                         for var, key in (("AWS_ACCESS_KEY_ID", "access-key-id"),
                                          ("AWS_SECRET_ACCESS_KEY", "secret-access-key"))
                         if ("tunefleet-s3", key) not in refs or var not in env_names(spec)]
    return problems


def migration_problems(docs: list[dict]) -> list[str]:
    jobs = of_kind(docs, "Job")
    if not jobs:
        return ["no migration Job"]
    container = next(iter(jobs.values()))["spec"]["template"]["spec"]["containers"][0]
    command, problems = container["command"], []
    if command != ["tunefleet", "migrate"]:
        return [f"the Job runs {command}, not `tunefleet migrate`"]
    if "TUNEFLEET_DATABASE_URL" not in env_names(jobs[next(iter(jobs))]["spec"]["template"]["spec"]):
        problems.append("the migration Job has no TUNEFLEET_DATABASE_URL")
    return problems


# ---- Kubernetes ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_matches_the_kubernetes_schemas(path):
    docs = load_yaml_docs(path)
    assert docs, f"{path} holds no manifest"
    assert [p for doc in docs for version in K8S_VERSIONS for p in schema_problems(doc, version)] == []


def test_kustomization_applies_every_manifest_but_the_examples():
    listed = set(kustomization()["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert listed == on_disk
    assert not any(name.startswith("examples/") for name in listed)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_builds_what_the_files_hold():
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=True)
    built = [doc for doc in yaml.safe_load_all(out.stdout) if doc]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in built) == sorted(
        (d["kind"], d["metadata"]["name"]) for d in applied_docs())
    assert [p for doc in built for p in schema_problems(doc, K8S_VERSIONS[-1])] == []


@pytest.mark.parametrize("check", [service_problems, private_key_problems, network_policy_problems, nats_problems,
                                   autoscaling_problems, ingress_problems, url_problems, storage_problems,
                                   migration_problems], ids=lambda f: f.__name__)
def test_the_manifests_hold(check):
    assert check(applied_docs()) == []


def test_every_secret_read_is_described():
    assert secret_problems(applied_docs(), example_secrets()) == []


def test_the_migration_job_runs_every_services_migrations():
    from typer.testing import CliRunner

    from services.cli import stack
    from services.cli.main import app

    assert set(stack.OWNERS) == set(SERVICES)
    refused = CliRunner().invoke(app, ["migrate"], env={"TUNEFLEET_DATABASE_URL": ""})
    assert refused.exit_code == 2 and "TUNEFLEET_DATABASE_URL is not set" in refused.output


def test_the_nats_config_is_valid_for_nats_server(tmp_path):
    config = of_kind(applied_docs(), "ConfigMap")["nats-config"]["data"]["nats.conf"]
    (tmp_path / "nats.conf").write_text(config)
    result = subprocess.run([nats_server_binary(), "-t", "-c", str(tmp_path / "nats.conf")], capture_output=True,
                            text=True, timeout=30, env={**os.environ, "SERVER_NAME": "nats-0", "NATS_PASSWORD": "x"})
    assert result.returncode == 0, result.stderr


def test_the_http_probes_call_routes_the_services_answer(tmp_path):
    """The kubelet follows redirects and takes any answer under 400: the gateway's and ingest's probe paths answer
    so before any request needs the database (the lifespan is not run here)."""
    from starlette.testclient import TestClient

    from services.gateway.app import create_app as gateway_app
    from services.metrics_ingest.app import create_app as ingest_app
    from shared.settings import Settings

    settings = Settings(secret_key="manifest-check-key-0123456789abcdefghij", home=tmp_path)
    deployments = of_kind(applied_docs(), "Deployment")
    for name, app in (("gateway", gateway_app(settings)), ("metrics-ingest", ingest_app(settings))):
        container = deployments[name]["spec"]["template"]["spec"]["containers"][0]
        paths = {container[p]["httpGet"]["path"] for p in ("startupProbe", "livenessProbe", "readinessProbe")}
        client = TestClient(app)
        assert {path: client.get(path).status_code < 400 for path in paths} == dict.fromkeys(paths, True)


def test_the_gateway_is_not_probed_on_the_stack_wide_healthz():
    """/healthz answers 503 while any other service is down: as a probe it would take the whole API away."""
    container = of_kind(applied_docs(), "Deployment")["gateway"]["spec"]["template"]["spec"]["containers"][0]
    assert all(container[p]["httpGet"]["path"] != "/healthz" for p in ("livenessProbe", "readinessProbe"))


def test_the_image_carries_the_probe_script():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^COPY deploy/probes \./deploy/probes$", dockerfile, re.M)
    assert re.search(r"^WORKDIR /app$", dockerfile, re.M)


# ---- the probe script ---------------------------------------------------------------------------------------------

def run_probe(nats_url: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PROBE)], env={"TUNEFLEET_NATS_URL": nats_url, "PATH": os.defpath},
                          capture_output=True, text=True, timeout=30)


def test_the_probe_passes_while_a_nats_connection_is_established():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        other = free_port()
        assert run_probe(f"nats://u:p@127.0.0.1:{port}").returncode == 1  # listening is not connected
        with socket.create_connection(("127.0.0.1", port)):
            accepted, _ = server.accept()
            with accepted:
                assert run_probe(f"nats://u:p@127.0.0.1:{port}").returncode == 0
                assert run_probe(f"nats://127.0.0.1:{other},nats://u:p@127.0.0.1:{port}").returncode == 0
                assert run_probe(f"nats://u:p@127.0.0.1:{other}").returncode == 1
    assert run_probe("").returncode == 1


def test_the_probe_reads_the_proc_tables():
    sys.path.insert(0, str(PROBE.parent))
    try:
        import nats_connected
    finally:
        sys.path.remove(str(PROBE.parent))
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode"
    established = f"{header}\n   0: 0100007F:9933 0A01000A:107E 01 00000000:00000000 00:00000000 00000000  0  0 1"
    waiting = established.replace(" 01 ", " 06 ")
    assert nats_connected.nats_ports("nats://u:p@nats-0:4222,nats-1,tls://nats-2:4333") == {4222, 4333}
    assert nats_connected.connected("nats://nats:4222", [established])
    assert not nats_connected.connected("nats://nats:4222", [waiting])
    assert not nats_connected.connected("nats://nats:4333", [established])


# ---- the Secrets script -------------------------------------------------------------------------------------------

FAKE_KUBECTL = """#!{python}
# kubectl's stand-in: `create -f -` records the Secret it reads; `get secret NAME` finds the ones recorded.
import json, os, pathlib, sys
import yaml
store = pathlib.Path(os.environ["FAKE_KUBECTL"])
args = sys.argv[1:]
with open(store / "argv.jsonl", "a") as f:
    f.write(json.dumps(args) + "\\n")
if "get" in args:
    kind, name = args[args.index("get") + 1:args.index("get") + 3]
    sys.exit(0 if kind == "namespace" or (store / f"{{name}}.yaml").exists() else 1)
if args[-3:] == ["create", "-f", "-"]:
    doc = yaml.safe_load(sys.stdin)
    (store / f"{{doc['metadata']['name']}}.yaml").write_text(yaml.safe_dump(doc))
    sys.exit(0)
sys.exit(f"unexpected kubectl {{args}}")
"""


def test_create_secrets_makes_what_the_manifests_read(tmp_path):
    bin_dir, store = tmp_path / "bin", tmp_path / "secrets"
    bin_dir.mkdir()
    store.mkdir()
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(FAKE_KUBECTL.format(python=sys.executable))
    kubectl.chmod(kubectl.stat().st_mode | stat.S_IXUSR)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_KUBECTL": str(store),
           "PYTHON": sys.executable, "S3_ACCESS_KEY_ID": "AKIA-test", "S3_SECRET_ACCESS_KEY": 'se"cret\\'}
    first = subprocess.run(["bash", str(K8S / "create-secrets.sh")], env=env, capture_output=True, text=True,
                           timeout=120)
    assert first.returncode == 0, first.stderr
    made = [yaml.safe_load(p.read_text()) for p in sorted(store.glob("*.yaml"))]
    assert [p for doc in made for p in schema_problems(doc, K8S_VERSIONS[-1])] == []
    described = {s["metadata"]["name"]: set(s["stringData"]) for s in example_secrets()}
    assert {s["metadata"]["name"]: set(s["stringData"]) for s in made} == {
        name: keys for name, keys in described.items() if name != "tunefleet-smtp"}  # no SMTP_PASSWORD given
    values = {s["metadata"]["name"]: s["stringData"] for s in made}
    assert values["tunefleet-s3"]["secret-access-key"] == 'se"cret\\'
    assert values["tunefleet-nats"]["url"] == f"nats://tunefleet:{values['tunefleet-nats']['password']}@nats:4222"
    from shared.sealing import seal, unseal

    sealed = seal(values[PUBLIC_SECRET]["public-key"], {"a": "b"})
    assert unseal(values[PRIVATE_SECRET]["private-key"], sealed) == {"a": "b"}
    argv = (store / "argv.jsonl").read_text()
    assert not [v for s in values.values() for v in s.values() if len(v) > 8 and v in argv]  # none on a command line
    again = subprocess.run(["bash", str(K8S / "create-secrets.sh")], env=env, capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0, again.stderr
    assert "created" not in again.stdout
    assert {s["metadata"]["name"]: s["stringData"] for s in
            (yaml.safe_load(p.read_text()) for p in store.glob("*.yaml"))} == values


# ---- compose ------------------------------------------------------------------------------------------------------

def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def interpolate(value, env: dict[str, str] = COMPOSE_ENV):
    """Compose's interpolation of ${VAR}, ${VAR:-default}, ${VAR:?error} and $$, as ``docker compose config``."""
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op"), match.group("arg")
        if env.get(name):
            return env[name]
        if op == ":?":
            raise KeyError(f"compose needs {name}: {arg}")
        return arg if op == ":-" else ""

    return re.sub(r"\$\$|\$\{(?P<name>\w+)(?:(?P<op>:-|:\?)(?P<arg>[^}]*))?\}", one, value)


def compose_env(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: interpolate(str(v)) for k, v in env.items()}


def tunefleet_services(spec: dict) -> dict[str, dict]:
    """The compose services that run a TuneFleet service (python -m services.<name>)."""
    return {name: s for name, s in spec["services"].items() if s.get("command", [None])[:2] == ["python", "-m"]}


def nats_services(spec: dict) -> dict[str, dict]:
    return {name: s for name, s in spec["services"].items() if str(s.get("image", "")).startswith("nats:")}


def flags(command: list[str]) -> dict[str, str | bool]:
    out: dict[str, str | bool] = {}
    for i, arg in enumerate(command):
        if arg.startswith("-"):
            following = command[i + 1] if i + 1 < len(command) else None
            out[arg] = following if following is not None and not following.startswith("-") else True
    return out


def compose_problems(spec: dict) -> list[str]:
    problems = []
    services = tunefleet_services(spec)
    problems += [f"no compose service runs services.{s}" for s in SERVICES
                 if not any(c["command"][2] == f"services.{s}" for c in services.values())]
    nats = nats_services(spec)
    if len(nats) != 3:
        problems.append(f"compose has {len(nats)} NATS servers, not 3")
    names, clusters = set(), set()
    for name, server in nats.items():
        f = flags(interpolate(server["command"]))
        if not (f.get("-js") or f.get("--jetstream")):
            problems.append(f"{name} runs without JetStream")
        names.add(f.get("--server_name"))
        clusters.add(f.get("--cluster_name"))
        routes = set(str(f.get("--routes", "")).split(","))
        problems += [f"{name} has no route to {other}" for other in nats if f"nats://{other}:6222" not in routes]
        if not str(f.get("--cluster", "")).endswith(":6222"):
            problems.append(f"{name} listens for no routes on 6222")
    if len(names) != len(nats) or None in names:
        problems.append(f"the NATS servers' names are not each their own: {names}")
    if len(clusters) != 1 or None in clusters:
        problems.append(f"the NATS servers are not of one named cluster: {clusters}")
    for name, service in services.items():
        env, module = compose_env(service), service["command"][2].removeprefix("services.")
        url = env.get("TUNEFLEET_NATS_URL", "")
        problems += [f"{name}'s TUNEFLEET_NATS_URL does not name {server}" for server in nats
                     if f"@{server}:4222" not in url and f"//{server}:4222" not in url]
        problems += [f"{name} has no {v}" for v in PUBLIC_URLS if not env.get(v)]
        if (PRIVATE_KEY in env) != module.startswith("provider_"):
            problems.append(f"{name} {'has' if PRIVATE_KEY in env else 'lacks'} the private sealing key")
        if (PUBLIC_KEY in env) != (module == "gateway"):
            problems.append(f"{name} {'has' if PUBLIC_KEY in env else 'lacks'} the public sealing key")
        if "test" not in service.get("healthcheck", {}) or service["healthcheck"].get("disable"):
            problems.append(f"{name} has no healthcheck")
        if env.get("TUNEFLEET_STORAGE_BACKEND") != "s3" or not env.get("TUNEFLEET_S3_BUCKET"):
            problems.append(f"{name} does not keep its files in the S3 bucket")
        waits = service.get("depends_on", {})
        problems += [f"{name} does not wait for {d} to be {c}" for d, c in
                     [*((n, "service_healthy") for n in nats), ("postgres", "service_healthy"),
                      ("migrate", "service_completed_successfully"), ("minio-bucket", "service_completed_successfully")]
                     if waits.get(d, {}).get("condition") != c]
    bucket = spec["services"].get("minio-bucket", {})
    if "mc mb" not in " ".join(bucket.get("command", [])):
        problems.append("no one-shot makes the bucket")
    if "minio" not in spec["services"]:
        problems.append("no MinIO")
    return problems


def test_compose_matches_the_compose_specification():
    schema = get_builtin_schema("vendor.compose-spec")
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(compose()), key=lambda e: e.json_path)
    assert [f"{e.json_path}: {e.message}" for e in errors] == []


def test_compose_holds():
    assert compose_problems(compose()) == []


def test_compose_public_urls_are_the_operators():
    """Every TuneFleet service has both public URLs, set from the operator's variables (the local provider's
    trainers excepted: they reach ingest by its service name)."""
    for name, service in tunefleet_services(compose()).items():
        env = service["environment"]
        for variable in PUBLIC_URLS:
            if name == "provider-local" and variable == "TUNEFLEET_INGEST_PUBLIC_URL":
                assert env[variable] == "http://metrics-ingest:8001"
            else:
                assert env[variable].startswith("${" + variable + ":-"), (name, variable)
                assert interpolate(env[variable], {**COMPOSE_ENV, variable: "https://x.example"}) == "https://x.example"


def test_compose_nats_servers_form_one_jetstream_cluster(tmp_path):
    """Compose's three NATS commands, run as they are but on loopback ports (each name compose resolves becomes
    127.0.0.1 and a port of its own), make one cluster whose servers all report JetStream healthy."""
    nats = nats_services(compose())
    ports = {name: {"client": free_port(), "route": free_port(), "monitor": free_port()} for name in nats}
    processes = []
    try:
        for name, server in nats.items():
            command = interpolate(server["command"])
            for other, p in ports.items():
                command = [arg.replace(f"nats://{other}:6222", f"nats://127.0.0.1:{p['route']}") for arg in command]
            own = ports[name]
            command = [{"nats://0.0.0.0:6222": f"nats://127.0.0.1:{own['route']}", "8222": str(own["monitor"]),
                        "/data": str(tmp_path / name)}.get(arg, arg) for arg in command]
            processes.append(subprocess.Popen([nats_server_binary(), *command, "-a", "127.0.0.1", "-p",
                                               str(own["client"])], stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL))
        deadline, healthy = time.monotonic() + 60, set()
        while time.monotonic() < deadline and len(healthy) < len(nats):
            for name, p in ports.items():
                try:
                    if httpx.get(f"http://127.0.0.1:{p['monitor']}/healthz", timeout=2).status_code == 200:
                        healthy.add(name)
                except httpx.HTTPError:
                    pass
            time.sleep(0.2)
        assert healthy == set(nats)
        for name, p in ports.items():
            routes = httpx.get(f"http://127.0.0.1:{p['monitor']}/routez", timeout=5).json()["routes"]
            assert {r["remote_name"] for r in routes} == set(nats) - {name}
            varz = httpx.get(f"http://127.0.0.1:{p['monitor']}/varz", timeout=5).json()
            assert varz["cluster"]["name"] == "tunefleet"
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)


# ---- the checks can fail ------------------------------------------------------------------------------------------

def _deployment(docs: list[dict], name: str) -> dict:
    return of_kind(docs, "Deployment")[name]


def _container(docs: list[dict], name: str) -> dict:
    return _deployment(docs, name)["spec"]["template"]["spec"]["containers"][0]


def _drop_probe(docs):
    del _container(docs, "scheduler")["livenessProbe"]


def _drop_memory_limit(docs):
    del _container(docs, "notifier")["resources"]["limits"]["memory"]


def _private_key_to_gateway(docs):
    _container(docs, "gateway")["env"].append(
        {"name": PRIVATE_KEY, "valueFrom": {"secretKeyRef": {"name": PRIVATE_SECRET, "key": "private-key"}}})


def _private_key_as_volume(docs):
    _deployment(docs, "notifier")["spec"]["template"]["spec"]["volumes"].append(
        {"name": "keys", "secret": {"secretName": PRIVATE_SECRET}})


def _two_nats_servers(docs):
    of_kind(docs, "StatefulSet")["nats"]["spec"]["replicas"] = 2


def _nats_open_to_the_namespace(docs):
    of_kind(docs, "NetworkPolicy")["nats"]["spec"]["ingress"][0]["from"] = [{"namespaceSelector": {}}]


def _postgres_unguarded(docs):
    of_kind(docs, "NetworkPolicy")["postgres"]["spec"]["podSelector"] = {"matchLabels": {"app": "something-else"}}


def _job_cut_off_postgres(docs):
    rule = of_kind(docs, "NetworkPolicy")["postgres"]["spec"]["ingress"][0]
    rule["from"][0]["podSelector"]["matchExpressions"][0]["values"] = ["service"]


def _wrong_public_url(docs):
    of_kind(docs, "ConfigMap")["tunefleet"]["data"]["TUNEFLEET_INGEST_PUBLIC_URL"] = "http://metrics-ingest:8001"


def _internal_url_for_runpod(docs):
    _container(docs, "provider-runpod")["env"].append(
        {"name": "TUNEFLEET_INGEST_PUBLIC_URL", "value": "http://metrics-ingest:8001"})


def _replicas_under_hpa(docs):
    _deployment(docs, "gateway")["spec"]["replicas"] = 2


def _no_notifier(docs):
    docs.remove(_deployment(docs, "notifier"))


def _unknown_secret(docs):
    _container(docs, "scheduler")["env"].append(
        {"name": "X", "valueFrom": {"secretKeyRef": {"name": "tunefleet-nats", "key": "no-such-key"}}})


def _probe_on_undeclared_port(docs):
    _container(docs, "gateway")["readinessProbe"]["httpGet"]["port"] = 9999


@pytest.mark.parametrize(("break_it", "check", "expected"), [
    (_drop_probe, service_problems, "scheduler/scheduler has no livenessProbe"),
    (_drop_memory_limit, service_problems, "notifier/notifier has no resources.limits.memory"),
    (_probe_on_undeclared_port, service_problems, "gateway/gateway readinessProbe calls port 9999"),
    (_no_notifier, service_problems, "no Deployment notifier"),
    (_private_key_to_gateway, private_key_problems, "gateway has the private sealing key"),
    (_private_key_as_volume, private_key_problems, "notifier has the private sealing key"),
    (_two_nats_servers, nats_problems, "the NATS StatefulSet has 2 replicas, not 3"),
    (_nats_open_to_the_namespace, network_policy_problems, "NetworkPolicy nats lets in {'namespaceSelector': {}}"),
    (_postgres_unguarded, network_policy_problems, "no NetworkPolicy selects the postgres pods"),
    (_job_cut_off_postgres, network_policy_problems, "tunefleet-migrate cannot reach postgres:5432"),
    (_wrong_public_url, ingress_problems, "TUNEFLEET_INGEST_PUBLIC_URL 'http://metrics-ingest:8001' is not"),
    (_internal_url_for_runpod, url_problems, "provider-runpod has TUNEFLEET_INGEST_PUBLIC_URL='http://metrics-ing"),
    (_replicas_under_hpa, autoscaling_problems, "Deployment gateway sets replicas"),
    (_unknown_secret, lambda docs: secret_problems(docs, example_secrets()), "no-such-key of Secret tunefleet-nats"),
], ids=lambda v: getattr(v, "__name__", None) if callable(v) else None)
def test_a_broken_copy_is_caught(break_it, check, expected):
    docs = copy.deepcopy(applied_docs())
    assert check(docs) == []
    break_it(docs)
    problems = check(docs)
    assert any(expected in p for p in problems), problems


def test_a_schema_error_is_caught():
    deployment = copy.deepcopy(_deployment(applied_docs(), "scheduler"))
    deployment["spec"]["replicas"] = "two"
    assert schema_problems(deployment, K8S_VERSIONS[-1])
    deployment["spec"]["replicas"] = 2
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}  # a misspelt field
    assert schema_problems(deployment, K8S_VERSIONS[-1])


def _compose_private_key_in_scheduler(spec):
    spec["services"]["scheduler"]["environment"] = {**spec["services"]["scheduler"]["environment"], PRIVATE_KEY: "x"}


def _compose_two_nats(spec):
    del spec["services"]["nats-3"]


def _compose_unrouted(spec):
    command = spec["services"]["nats-2"]["command"]
    command[command.index("--routes") + 1] = "nats://nats-1:6222"


def _compose_no_public_url(spec):
    spec["services"]["provider-kaggle"]["environment"] = {
        k: v for k, v in spec["services"]["provider-kaggle"]["environment"].items() if k != PUBLIC_URLS[0]}


def _compose_no_healthcheck(spec):
    del spec["services"]["notifier"]["healthcheck"]


@pytest.mark.parametrize(("break_it", "expected"), [
    (_compose_private_key_in_scheduler, "scheduler has the private sealing key"),
    (_compose_two_nats, "compose has 2 NATS servers, not 3"),
    (_compose_unrouted, "nats-2 has no route to nats-3"),
    (_compose_no_public_url, "provider-kaggle has no TUNEFLEET_GATEWAY_PUBLIC_URL"),
    (_compose_no_healthcheck, "notifier has no healthcheck"),
], ids=lambda v: getattr(v, "__name__", None) if callable(v) else None)
def test_a_broken_compose_is_caught(break_it, expected):
    spec = copy.deepcopy(compose())
    break_it(spec)
    problems = compose_problems(spec)
    assert any(expected in p for p in problems), problems


def test_a_compose_schema_error_is_caught():
    spec = copy.deepcopy(compose())
    spec["services"]["minio-bucket"]["depends_on"]["minio"]["condition"] = "service_ready"  # not a condition
    spec["services"]["postgres"]["restart_policy"] = "always"  # not a compose key
    validator = jsonschema.Draft202012Validator(get_builtin_schema("vendor.compose-spec"))
    assert {list(e.absolute_path)[1] for e in validator.iter_errors(spec)} == {"minio-bucket", "postgres"}
