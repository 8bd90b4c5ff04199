#!/usr/bin/env python3
"""Check the Kubernetes manifests (installers/kubernetes/) and the Helm chart
(installers/helm/piko/): run by installers/kubernetes/test.sh in its own venv.

The chart is rendered with Helm's own engine (helm-python-sdk: Helm v4's Go SDK as a C
library, no helm binary), with its default values and with ci/custom-values.yaml, and linted.
Every manifest is validated against the Kubernetes OpenAPI schemas (kubernetes-validate,
strict: unknown fields are errors) of the oldest and newest Kubernetes versions below, and
checked for what the schemas cannot see: the join name is the headless Service's, the probes
reach the admin port, the PDB keeps a Raft quorum, secrets are referenced, every PIKO_
variable is one the server reads, and the chart's defaults are the plain manifests'.

    check.py --server-help FILE [--docker-image IMAGE]

FILE holds `piko-server --help` (its list of PIKO_ variables). With --docker-image, the plain
StatefulSet's three pods are also run in Docker (see `run_in_docker`).
"""

import argparse
import base64
import copy
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PLAIN = os.path.join(ROOT, "installers", "kubernetes")
CHART = os.path.join(ROOT, "installers", "helm", "piko")
# The oldest Kubernetes still commonly run, and the newest kubernetes-validate knows.
K8S_VERSIONS = ["1.27", kubernetes_validate.utils.latest_version()]
ADMIN_PORT = 8002  # the server's default admin port (SPEC section 3)
CLUSTER_PORT = 8003

failures = []
counts = {"checks": 0, "objects": 0}


def check(cond, where, what):
    """Record one semantic check; a failed one is printed and fails the run."""
    counts["checks"] += 1
    if not cond:
        failures.append(f"{where}: {what}")
        print(f"FAIL {where}: {what}")
    return bool(cond)


def load_docs(text, where):
    try:
        return [d for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError as e:
        check(False, where, f"not YAML: {e}")
        return []


def duration_secs(s):
    """A server duration (`30s`, `1m`, `1m30s`, `500ms`) in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", s)
    if not parts or "".join(a + b for a, b in parts) != s:
        raise ValueError(f"not a duration: {s!r}")
    return sum(float(a) * units[b] for a, b in parts)


def wanted_voters(n):
    """The server's voter policy (server/src/cluster/voters.rs): 5, 3 or 1."""
    return 5 if n >= 5 else 3 if n >= 3 else 1


def image_user():
    """The numeric user of the image (installers/docker/Dockerfile's USER)."""
    with open(os.path.join(ROOT, "installers", "docker", "Dockerfile")) as f:
        m = re.search(r"^USER (\d+):(\d+)$", f.read(), re.M)
    return int(m.group(1)), int(m.group(2))


def workspace_version():
    with open(os.path.join(ROOT, "Cargo.toml")) as f:
        return re.search(r'^version = "([^"]+)"', f.read(), re.M).group(1)


# --- loading ---------------------------------------------------------------------------

def load_plain():
    """The plain manifests as `kubectl apply -k` would send them (the kustomization only
    lists resources and sets the image tag, which is applied here)."""
    with open(os.path.join(PLAIN, "kustomization.yaml")) as f:
        kust = yaml.safe_load(f)
    on_disk = sorted(
        n for n in os.listdir(PLAIN) if n.endswith(".yaml") and n != "kustomization.yaml"
    )
    check(sorted(kust["resources"]) == on_disk, "kustomization.yaml",
          f"resources {sorted(kust['resources'])} are not the manifests on disk {on_disk}")
    objs = []
    for name in kust["resources"]:
        with open(os.path.join(PLAIN, name)) as f:
            objs += load_docs(f.read(), name)
    for img in kust.get("images", []):
        hits = 0
        for c in containers(objs):
            repo, _, _tag = c["image"].rpartition(":")
            if repo == img["name"]:
                c["image"] = f"{img.get('newName', repo)}:{img.get('newTag', _tag)}"
                hits += 1
        check(hits > 0, "kustomization.yaml", f"images entry {img['name']} matches no container")
    # kubectl's own kustomize, where there is a kubectl, must build the same objects.
    if shutil.which("kubectl"):
        r = subprocess.run(["kubectl", "kustomize", PLAIN], capture_output=True, text=True)
        if check(r.returncode == 0, "kubectl kustomize", r.stderr.strip()):
            built = load_docs(r.stdout, "kubectl kustomize")
            key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
            check(sorted(built, key=key) == sorted(objs, key=key), "kubectl kustomize",
                  "builds other objects than the manifests with the kustomization applied")
            print("plain: kubectl kustomize builds the same objects")
    else:
        print("plain: no kubectl here; the kustomization was applied by this script")
    return objs


def render_chart(values, release, namespace):
    where = f"chart[{release}]"
    lint = helm.lint(CHART, values=values, strict=True, namespace=namespace)
    bad = [m for m in lint["messages"] if m["severity"] > 1] + lint["errors"]
    check(not bad, where, f"helm lint: {bad}")
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values, name=release, namespace=namespace, is_install=True)
    objs = []
    for path, text in sorted(out.items()):
        if path.endswith(".txt"):
            check("{{" not in text and text.strip(), where, f"{path} did not render")
            continue
        objs += load_docs(text, f"{where} {path}")
    return objs


def containers(objs):
    return [c for o in objs if o["kind"] == "StatefulSet"
            for c in o["spec"]["template"]["spec"]["containers"]]


def one(objs, kind, where, **match):
    found = [o for o in objs if o["kind"] == kind
             and all(o["metadata"].get(k) == v for k, v in match.items())]
    check(len(found) == 1, where, f"expected one {kind} {match or ''}, found {len(found)}")
    return found[0] if found else None


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# --- schema validation -------------------------------------------------------------------

def validate_schemas(where, objs):
    for o in objs:
        name = f"{where} {o['kind']}/{o['metadata']['name']}"
        counts["objects"] += 1
        if o["apiVersion"] == "monitoring.coreos.com/v1":
            # A CRD of the Prometheus Operator: not in the Kubernetes schemas; its fields
            # are checked in `check_service_monitor`.
            continue
        for v in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(o, v, strict=True)
                counts["checks"] += 1
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                check(False, name, f"Kubernetes {v} schema: {path}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                check(False, name, e.message)


# --- semantic checks ---------------------------------------------------------------------

def env_map(where, container):
    """The container's env as name → entry, checking each $(VAR) is defined before use (as
    Kubernetes requires for the reference to be expanded)."""
    seen, out = set(), {}
    for e in container.get("env", []):
        for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", e.get("value", "")):
            check(ref in seen, where, f"{e['name']} uses $({ref}) before it is defined")
        check(e["name"] not in out, where, f"{e['name']} is set twice")
        seen.add(e["name"])
        out[e["name"]] = e
    return out


def check_manifests(where, objs, *, namespace, domain, replicas, cluster_tls, admin_tls,
                    server_env, token_secret_created):
    """Everything the schemas cannot see. `namespace` is the namespace as the manifests
    spell it (`$(POD_NAMESPACE)` for the plain ones)."""
    sts = one(objs, "StatefulSet", where)
    if sts is None:
        return
    spec, pod = sts["spec"], sts["spec"]["template"]["spec"]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    check(selects(spec["selector"]["matchLabels"], labels), where,
          "the StatefulSet's selector does not match its pods")
    check(spec["replicas"] == replicas, where, f"replicas {spec['replicas']} != {replicas}")
    check(spec.get("podManagementPolicy", "OrderedReady") == "OrderedReady", where,
          "pods must start one by one (OrderedReady) so that only one starts the cluster")
    [c] = pod["containers"]
    env = env_map(where, c)
    val = lambda n: env.get(n, {}).get("value")  # noqa: E731
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    check(ports.get("admin") == ADMIN_PORT and ports.get("cluster") == CLUSTER_PORT, where,
          f"container ports {ports}")

    # Every PIKO_ variable is one the server reads (a misspelt one would be ignored).
    for name in env:
        if name.startswith("PIKO_"):
            check(name in server_env, where, f"{name} is not a variable piko-server reads")
    # The pod name and namespace come from the downward API.
    check(env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
          == "metadata.name", where, "POD_NAME is not the pod's name")
    if namespace == "$(POD_NAMESPACE)":
        check(env.get("POD_NAMESPACE", {}).get("valueFrom", {}).get("fieldRef", {})
              .get("fieldPath") == "metadata.namespace", where,
              "POD_NAMESPACE is not the pod's namespace")
    check(val("PIKO_CLUSTER_NODE_ID") == "$(POD_NAME)", where, "the node id is not the pod name")

    # The headless Service that cluster.join resolves.
    headless = one(objs, "Service", where, name=spec["serviceName"])
    if headless:
        hs = headless["spec"]
        check(hs.get("clusterIP") == "None", where, f"{spec['serviceName']} is not headless")
        check(hs.get("publishNotReadyAddresses") is True, where,
              "the headless Service must publish not-ready pods (a joining node is not ready)")
        check(selects(hs["selector"], labels), where, "the headless Service selects no node")
        check(any(p["targetPort"] in ("cluster", CLUSTER_PORT) and p["port"] == CLUSTER_PORT
                  for p in hs["ports"]), where, "the headless Service lacks the cluster port")
    suffix = f"{spec['serviceName']}.{namespace}.svc.{domain}"
    if cluster_tls:
        want = ",".join(f"{sts['metadata']['name']}-{i}.{suffix}:{CLUSTER_PORT}"
                        for i in range(replicas))
    else:
        want = f"{suffix}:{CLUSTER_PORT}"
    check(val("PIKO_CLUSTER_JOIN") == want, where,
          f"cluster.join is {val('PIKO_CLUSTER_JOIN')!r}, not {want!r}")
    for port, number in [("cluster", 8003), ("proxy", 8000), ("upstream", 8001), ("admin", 8002)]:
        var = f"PIKO_{port.upper()}_ADVERTISE_ADDR"
        check(val(var) == f"$(POD_NAME).{suffix}:{ports.get(port)}" and ports.get(port) == number,
              where, f"{var} is {val(var)!r}: not the pod's name under the headless Service")

    # The client Service: proxy and upstream of the ready nodes, nothing else.
    clients = [o for o in objs if o["kind"] == "Service" and o["spec"].get("clusterIP") != "None"]
    check(len(clients) == 1, where, f"expected one client Service, found {len(clients)}")
    for s in clients:
        targets = {p["targetPort"] for p in s["spec"]["ports"]}
        check(targets == {"proxy", "upstream"}, where, f"client Service targets {targets}")
        check(selects(s["spec"]["selector"], labels), where, "the client Service selects no node")
        check(not s["spec"].get("publishNotReadyAddresses"), where,
              "the client Service must route to ready nodes only")

    # Probes on the admin port: /ready for readiness, /health for liveness.
    for probe, path in [("readinessProbe", "/ready"), ("livenessProbe", "/health")]:
        g = c.get(probe, {}).get("httpGet", {})
        port = ports.get(g.get("port"), g.get("port"))
        check(g.get("path") == path and port == ADMIN_PORT, where,
              f"{probe} is {g}: not {path} on the admin port {ADMIN_PORT}")
        check(g.get("scheme", "HTTP") == ("HTTPS" if admin_tls else "HTTP"), where,
              f"{probe} scheme {g.get('scheme')} with admin TLS {admin_tls}")
    bind = val("PIKO_ADMIN_BIND_ADDR")
    check(bind is None or bind.endswith(f":{ADMIN_PORT}"), where, f"admin bind {bind}")

    # Draining takes grace_period, then leaving the Raft group: the pod must get longer.
    try:
        grace = duration_secs(val("PIKO_GRACE_PERIOD") or "1m")
    except ValueError as e:
        check(False, where, f"PIKO_GRACE_PERIOD: {e}")
        grace = 60
    check(pod["terminationGracePeriodSeconds"] > grace, where,
          f"terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} is not above "
          f"grace_period {grace}s")

    # The PodDisruptionBudget keeps a quorum of the voters and still lets one node go.
    pdb = one(objs, "PodDisruptionBudget", where)
    if pdb:
        p = pdb["spec"]
        check(selects(p["selector"]["matchLabels"], labels), where, "the PDB selects no node")
        allowed = p["maxUnavailable"] if "maxUnavailable" in p else replicas - p["minAvailable"]
        voters = wanted_voters(replicas)
        tolerated = voters - (voters // 2 + 1)
        check(1 <= allowed <= tolerated, where,
              f"the PDB lets {allowed} of {replicas} nodes go; {voters} voters tolerate "
              f"{tolerated} (and a drain needs at least 1)")

    # The cluster token (and every key) comes from a Secret, never inline.
    tok = env.get("PIKO_CLUSTER_TOKEN", {})
    ref = tok.get("valueFrom", {}).get("secretKeyRef")
    check(ref and "value" not in tok, where, "PIKO_CLUSTER_TOKEN is not from a Secret")
    for name, e in env.items():
        if re.search(r"TOKEN|HMAC_SECRET_KEY|_KEY$", name) and not name.endswith("_TLS_KEY"):
            check("value" not in e, where, f"{name} is written inline")
    secrets_made = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Secret"}
    if ref:
        if token_secret_created:
            s = secrets_made.get(ref["name"])
            check(s is not None and ref["key"] in s.get("data", {}), where,
                  f"the chart does not create the Secret {ref['name']} with key {ref['key']}")
            if s and ref["key"] in s.get("data", {}):
                token = base64.b64decode(s["data"][ref["key"]]).decode()
                check(len(token) >= 16, where, "the generated cluster token is short")
                check(token not in json.dumps(sts), where, "the token appears in the StatefulSet")
        else:
            check(ref["name"] not in secrets_made, where,
                  f"the Secret {ref['name']} is the operator's and must not be in the manifests")

    # The nodes run as the image's user on a read-only root; Raft data on its own volume.
    uid, gid = image_user()
    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True and psc.get("runAsUser") == uid
          and psc.get("fsGroup") == gid, where, f"pod securityContext {psc}: not user {uid}")
    check(csc.get("readOnlyRootFilesystem") is True and csc.get("allowPrivilegeEscalation") is False
          and csc.get("capabilities", {}).get("drop") == ["ALL"], where,
          f"container securityContext {csc}")
    req = c.get("resources", {}).get("requests", {})
    check("cpu" in req and "memory" in req, where, f"resource requests {req}")
    claims = {t["metadata"]["name"]: t for t in spec.get("volumeClaimTemplates", [])}
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    check(mounts.get(val("PIKO_CLUSTER_DATA_DIR")) in claims, where,
          f"cluster.data_dir {val('PIKO_CLUSTER_DATA_DIR')} is not on a volume claim")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for name, e in env.items():
        if re.match(r"PIKO_\w+_TLS_(CERT|KEY|CLIENT_CAS|ROOT_CAS)$", name):
            mount = next((n for p, n in mounts.items() if e.get("value", "").startswith(p + "/")),
                         None)
            check(mount and "secret" in volumes.get(mount, {}), where,
                  f"{name}={e.get('value')} is not in a mounted Secret")
    if cluster_tls:
        check(val("PIKO_CLUSTER_TLS_CLIENT_CAS"), where, "cluster TLS without mutual TLS")

    for sm in (o for o in objs if o["kind"] == "ServiceMonitor"):
        check_service_monitor(where, sm, headless, ports)


def check_service_monitor(where, sm, headless, ports):
    spec = sm.get("spec", {})
    known = {"selector", "namespaceSelector", "endpoints", "jobLabel", "targetLabels"}
    check(set(spec) <= known, where, f"ServiceMonitor fields {set(spec) - known}")
    check(headless and selects(spec["selector"]["matchLabels"], headless["metadata"]["labels"]),
          where, "the ServiceMonitor does not select the headless Service")
    for ep in spec.get("endpoints", []):
        svc_port = next((p for p in headless["spec"]["ports"] if p["name"] == ep.get("port")), {})
        check(ports.get(svc_port.get("targetPort")) == ADMIN_PORT and ep.get("path") == "/metrics",
              where, f"ServiceMonitor endpoint {ep} does not scrape /metrics on the admin port")
        check(re.fullmatch(r"\d+[smh]", ep.get("interval", "")), where, "bad scrape interval")


def normalized(objs, namespace):
    """The objects with what legitimately differs between the plain manifests and the chart
    removed (labels, comments, a namespace spelt out), for comparing their defaults."""
    out = {}
    for o in copy.deepcopy(objs):
        if o["kind"] in ("Secret", "ConfigMap"):
            continue
        o["metadata"] = {"name": o["metadata"]["name"]}
        text = json.dumps(o).replace("$(POD_NAMESPACE)", namespace)
        o = json.loads(text)
        spec = o.get("spec", {})
        if o["kind"] == "StatefulSet":
            tpl = spec["template"]
            tpl["metadata"] = {}
            spec.pop("selector")
            pod = tpl["spec"]
            pod.pop("affinity", None)
            for c in pod["containers"]:
                c["env"] = {e["name"]: e for e in c["env"] if e["name"] != "POD_NAMESPACE"}
                for probe in ("readinessProbe", "livenessProbe"):
                    c[probe]["httpGet"].setdefault("scheme", "HTTP")
            for t in spec["volumeClaimTemplates"]:
                t["metadata"] = {"name": t["metadata"]["name"]}
        for key in ("selector",):
            if o["kind"] in ("Service", "PodDisruptionBudget"):
                spec.pop(key, None)
        out[(o["kind"], o["metadata"]["name"])] = o
    return out


def check_same_defaults(plain, chart):
    """The chart with its defaults, installed as `piko` in `default`, is the plain
    manifests in `default` (the chart may set more variables, at the server's defaults)."""
    a, b = normalized(plain, "default"), normalized(chart, "default")
    check(set(a) == set(b), "defaults", f"objects differ: {sorted(set(a) ^ set(b))}")
    for k in sorted(set(a) & set(b)):
        x, y = a[k], b[k]
        if k[0] == "StatefulSet":
            cx = x["spec"]["template"]["spec"]["containers"][0]
            cy = y["spec"]["template"]["spec"]["containers"][0]
            extra = {n: cy["env"].pop(n) for n in set(cy["env"]) - set(cx["env"])}
            # The chart's extra settings are the server's defaults (`piko-server --help`).
            check(set(extra) <= {"PIKO_LOG_LEVEL", "PIKO_CLUSTER_NODE_LEASE"}, "defaults",
                  f"the chart sets more: {sorted(extra)}")
            check(extra.get("PIKO_LOG_LEVEL", {}).get("value", "info") == "info"
                  and extra.get("PIKO_CLUSTER_NODE_LEASE", {}).get("value", "10s") == "10s",
                  "defaults", f"the chart's extra settings are not the server's defaults: {extra}")
        check(x == y, "defaults", f"{k[0]}/{k[1]} differs:\n  plain {json.dumps(x, sort_keys=True)}"
              f"\n  chart {json.dumps(y, sort_keys=True)}")


# --- running the plain StatefulSet in Docker ------------------------------------------------

def run_in_docker(objs, image):
    """The plain StatefulSet's pods run as Docker containers with its container spec: its
    env (the downward API's values filled in), user, read-only root and dropped
    capabilities, and a network whose DNS names are the headless Service's (one name with a
    record per node, and one per pod). The nodes start one by one as OrderedReady does; the
    three must form one cluster, and a stopped node must drain and exit 0 within the
    termination grace period."""
    sts = next(o for o in objs if o["kind"] == "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    [c] = pod["containers"]
    ns, domain = "default", "cluster.local"
    nodes_svc = sts["spec"]["serviceName"]
    tag = f"piko-k8s-check-{os.getpid()}"
    token = secrets.token_urlsafe(24)
    uid = pod["securityContext"]["runAsUser"]
    gid = pod["securityContext"].get("runAsGroup", uid)
    names = [f"{sts['metadata']['name']}-{i}" for i in range(sts["spec"]["replicas"])]

    def docker(*args, check_rc=True):
        r = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
        if check_rc and r.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)}: {r.stderr.strip()}")
        return r

    def http(port, path):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, ""
        except OSError:
            return None, ""

    def running(name):
        r = docker("inspect", "-f", "{{.State.Running}}", f"{tag}-{name}", check_rc=False)
        return r.stdout.strip() == "true"

    def wait(what, cond, secs):
        end = time.time() + secs
        while time.time() < end:
            if cond():
                return True
            if not all(running(n) for n in started):
                return check(False, "docker", f"a node exited while waiting for {what}")
            time.sleep(0.5)
        return check(False, "docker", f"timed out after {secs}s waiting for {what}")

    docker("network", "create", tag)
    admin_ports, started = {}, []
    try:
        for name in names:
            values = {"POD_NAME": name, "POD_NAMESPACE": ns}
            args = ["run", "-d", "--name", f"{tag}-{name}", "--network", tag,
                    "--network-alias", f"{nodes_svc}.{ns}.svc.{domain}",
                    "--network-alias", f"{name}.{nodes_svc}.{ns}.svc.{domain}",
                    "--user", f"{uid}:{gid}", "--cap-drop", "ALL",
                    "--security-opt", "no-new-privileges",
                    "--mount", f"type=volume,dst={c['volumeMounts'][0]['mountPath']}",
                    "-p", f"127.0.0.1::{ADMIN_PORT}"]
            if c["securityContext"].get("readOnlyRootFilesystem"):
                args.append("--read-only")
            for e in c["env"]:
                if "value" in e:
                    v = re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], e["value"])
                elif e["valueFrom"].get("secretKeyRef"):
                    v = token
                else:
                    continue
                args += ["-e", f"{e['name']}={v}"]
            docker(*args, image, *c.get("args", []))
            started.append(name)
            out = docker("port", f"{tag}-{name}", str(ADMIN_PORT)).stdout.split("\n")[0]
            admin_ports[name] = out.rsplit(":", 1)[1]
            port = admin_ports[name]
            # OrderedReady: the next pod starts once this one is ready.
            if not wait(f"{name} /ready", lambda: http(port, "/ready")[0] == 200, 60):
                return
            check(http(port, "/health")[0] == 200, "docker", f"{name} /health")
        first = admin_ports[names[0]]

        def members():
            status, body = http(first, "/status/cluster/nodes")
            return status == 200 and len(json.loads(body)) == len(names)

        wait(f"{len(names)} nodes in {names[0]}'s /status/cluster/nodes", members, 30)
        counts["checks"] += 1
        # A stopped node drains (grace_period) and leaves, within the pod's grace period.
        last = f"{tag}-{names[-1]}"
        t0 = time.time()
        docker("stop", "-t", str(pod["terminationGracePeriodSeconds"]), last)
        took = time.time() - t0
        rc = docker("inspect", "-f", "{{.State.ExitCode}}", last).stdout.strip()
        check(rc == "0", "docker", f"{names[-1]} exited {rc} on SIGTERM (not a clean drain)")
        print(f"docker: {len(names)} nodes formed one cluster with the StatefulSet's env, user "
              f"{uid}, read-only root; {names[-1]} drained and exited {rc} in {took:.1f}s")
    finally:
        for name in started:
            r = docker("logs", f"{tag}-{name}", check_rc=False)
            if failures:
                print(f"--- logs of {name}\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
            docker("rm", "-f", "-v", f"{tag}-{name}", check_rc=False)
        docker("network", "rm", tag, check_rc=False)


# --- main ------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server-help", required=True)
    ap.add_argument("--docker-image")
    args = ap.parse_args()
    with open(args.server_help) as f:
        server_env = set(re.findall(r"env (PIKO_[A-Z0-9_]+)", f.read()))
    check(len(server_env) > 50, "piko-server --help", f"only {len(server_env)} PIKO_ variables")

    with open(os.path.join(CHART, "Chart.yaml")) as f:
        chart_meta = yaml.safe_load(f)
    version = workspace_version()
    check(chart_meta["appVersion"] == version, "Chart.yaml",
          f"appVersion {chart_meta['appVersion']} is not the workspace's {version}")

    plain = load_plain()
    with open(os.path.join(CHART, "ci", "custom-values.yaml")) as f:
        custom = yaml.safe_load(f)
    sets = {
        "plain": (plain, dict(namespace="$(POD_NAMESPACE)", domain="cluster.local", replicas=3,
                              cluster_tls=False, admin_tls=False, token_secret_created=False)),
        "chart defaults": (render_chart({}, "piko", "default"),
                           dict(namespace="default", domain="cluster.local", replicas=3,
                                cluster_tls=False, admin_tls=False, token_secret_created=True)),
        "chart custom values": (render_chart(custom, "edge", "tunnels"),
                                dict(namespace="tunnels", domain=custom["clusterDomain"],
                                     replicas=custom["replicas"], cluster_tls=True,
                                     admin_tls=True, token_secret_created=False)),
    }
    for where, (objs, expect) in sets.items():
        kinds = sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objs)
        print(f"{where}: {len(objs)} objects: {', '.join(kinds)}")
        check(len(objs) >= 5, where, "too few objects rendered")
        validate_schemas(where, objs)
        check_manifests(where, objs, server_env=server_env, **expect)

    # What the plain manifests can't say: the image tag, and that the custom values arrive.
    [c] = containers(plain)
    check(c["image"] == f"piko-server:{version}", "plain", f"image {c['image']}")
    objs = sets["chart custom values"][0]
    [c] = containers(objs)
    check(c["image"] == "registry.example.com/piko/piko-server:0.1.0-rc1", "custom", c["image"])
    check(any(o["kind"] == "ServiceMonitor" for o in objs), "custom", "no ServiceMonitor")
    cm = one(objs, "ConfigMap", "custom")
    if cm:
        check(yaml.safe_load(cm["data"]["server.yaml"]) == custom["config"], "custom",
              "the ConfigMap is not the extra config")
    check(c.get("args", [])[:2] == ["--config.path", "/etc/piko/config/server.yaml"]
          and "--upstream.max-streams=1024" in c["args"], "custom", f"args {c.get('args')}")
    env = {e["name"]: e for e in c["env"]}
    check(env["PIKO_UPSTREAM_TLS_CLIENT_CAS"]["value"].endswith("/ca.crt")
          and "PIKO_PROXY_TLS_CLIENT_CAS" not in env, "custom", "client CAs follow clientAuth")
    check(env["PIKO_PROXY_AUTH_HMAC_SECRET_KEY"]["valueFrom"]["secretKeyRef"]["optional"], "custom",
          "the auth keys must be optional keys of the port's Secret")
    check(env["PIKO_PROXY_AUTH_REQUIRE_ENDPOINTS"]["value"] == "true", "custom", "requireEndpoints")
    check_same_defaults(plain, sets["chart defaults"][0])
    # values.schema.json turns away wrong values before anything renders.
    with helm.Chart.load(CHART) as chart:
        for bad in [{"replicas": "three"}, {"replica": 3}, {"gracePeriod": "30 seconds"},
                    {"tls": {"proxy": {"secret": "x"}}}, {"log": {"format": "yaml"}}]:
            try:
                chart.render(bad, name="piko", namespace="default")
                check(False, "values.schema.json", f"accepts {bad}")
            except helm.HelmError:
                counts["checks"] += 1

    if args.docker_image:
        run_in_docker(plain, args.docker_image)
    else:
        print("docker: not run (no image given: PIKO_TEST_IMAGE)")

    print(f"validated {counts['objects']} objects against Kubernetes {', '.join(K8S_VERSIONS)} "
          f"(strict); {counts['checks']} checks")
    print(f"kubernetes: {counts['checks'] - len(failures)} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
