#!/usr/bin/env python3
"""Consistency checks of rendered manifests that no schema can make.

Usage: check-manifests.py RENDERED.yaml [...]

For each rendered kustomization: the pod's terminationGracePeriodSeconds covers the preStop
sleep, the gateway's grace period, its shutdown timeout and its 5 s stop margin (read from the
gateway.toml in the ConfigMap); the listeners in gateway.toml are the container's ports; probes,
Service target ports and the ServiceMonitor name ports that exist; every ConfigMap and Secret a
pod mounts is rendered; the files gateway.toml names (rules dir, key files) lie in mounted
volumes; selectors of the Service, PodDisruptionBudget, ServiceMonitor and NetworkPolicy match
the pods; the HorizontalPodAutoscaler targets a rendered Deployment; the ServiceMonitor (a CRD,
no schema here) has the fields the Prometheus Operator requires. Exit 1 with one line per
problem.
"""

import posixpath
import sys
import tomllib

import yaml

STOP_MARGIN_SECONDS = 5  # src/server.rs STOP_MARGIN
KNOWN_KINDS = {
    "Namespace", "ServiceAccount", "ConfigMap", "Secret", "Service", "Deployment",
    "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "ServiceMonitor",
}


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def check(path):
    problems = []

    def fail(msg):
        problems.append(f"{path}: {msg}")

    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    # Every kind is one the schemas know, but the ServiceMonitor (checked at the end): a
    # misspelt kind has no schema either, and the validator only warns about that.
    for kind in sorted(set(by_kind) - KNOWN_KINDS):
        fail(f"unexpected kind {kind}")
    config_maps = {d["metadata"]["name"]: d for d in by_kind.get("ConfigMap", [])}
    secrets = {d["metadata"]["name"] for d in by_kind.get("Secret", [])}
    deployments = {d["metadata"]["name"]: d for d in by_kind.get("Deployment", [])}

    gateway = deployments.get("claimgate")
    if gateway is None:
        fail("no Deployment named claimgate")
        return problems
    pod = gateway["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    spec = pod["spec"]
    container = next(c for c in spec["containers"] if c["name"] == "claimgate")
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}

    if not matches(gateway["spec"]["selector"]["matchLabels"], pod_labels):
        fail("the Deployment's selector does not match its pods")

    # The configuration the pod runs with.
    args = container.get("args", [])
    config_path = args[args.index("--config") + 1] if "--config" in args else None
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in spec.get("volumes", [])}

    def volume_of(file_path):
        """The volume holding file_path, and the path inside it."""
        for mount, name in mounts.items():
            if file_path.startswith(mount.rstrip("/") + "/"):
                return volumes.get(name), file_path[len(mount.rstrip("/")) + 1 :]
        return None, None

    def source_keys(volume):
        if volume is None:
            return None
        if "configMap" in volume:
            cm = config_maps.get(volume["configMap"]["name"])
            if cm is None:
                return None
            return set(cm.get("data", {})) | set(cm.get("binaryData", {}))
        if "secret" in volume:
            name = volume["secret"]["secretName"]
            doc = next(
                (s for s in by_kind.get("Secret", []) if s["metadata"]["name"] == name), None
            )
            return set((doc or {}).get("data", {})) | set((doc or {}).get("stringData", {}))
        return set()

    for v in spec.get("volumes", []):
        if "configMap" in v and v["configMap"]["name"] not in config_maps:
            fail(f"volume {v['name']} mounts ConfigMap {v['configMap']['name']}, not rendered")
        if "secret" in v and v["secret"]["secretName"] not in secrets:
            fail(f"volume {v['name']} mounts Secret {v['secret']['secretName']}, not rendered")

    settings = None
    if config_path is None:
        fail("the container is not run with --config")
    else:
        volume, key = volume_of(config_path)
        keys = source_keys(volume)
        if volume is None or "configMap" not in volume or keys is None or key not in keys:
            fail(f"{config_path} is not in a mounted, rendered ConfigMap")
        else:
            text = config_maps[volume["configMap"]["name"]]["data"][key]
            settings = tomllib.loads(text)

    if settings is not None:
        base = posixpath.dirname(config_path)

        def resolve(p):
            return posixpath.normpath(posixpath.join(base, p))

        server = settings.get("server", {})
        grace = server.get("grace_period_seconds", 0)
        timeout = server.get("graceful_shutdown_timeout_seconds", 5)
        pre_stop = (
            container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        )
        needed = pre_stop + grace + timeout + STOP_MARGIN_SECONDS
        termination = spec.get("terminationGracePeriodSeconds", 30)
        if termination < needed:
            fail(
                f"terminationGracePeriodSeconds {termination} < preStop {pre_stop} + grace "
                f"{grace} + timeout {timeout} + margin {STOP_MARGIN_SECONDS}: the kubelet's "
                "SIGKILL would cut the drain short"
            )
        if grace < 1:
            fail("grace_period_seconds is 0: the listener closes before endpoints are updated")

        listen = settings.get("listen", {})
        for name, addr in (("http", listen.get("proxy")), ("admin", listen.get("admin"))):
            if addr is None:
                fail(f"gateway.toml has no listen address for the {name} port")
                continue
            host, _, port = addr.rpartition(":")
            if ports.get(name) != int(port):
                fail(f"listen {addr} is not the container port {name} ({ports.get(name)})")
            if name == "admin" and host in ("127.0.0.1", "localhost", "[::1]"):
                fail("the admin listener is on loopback: the kubelet cannot probe it")

        rules_dir = resolve(settings.get("rules", {}).get("dir", "rules"))
        if rules_dir not in mounts:
            fail(f"rules dir {rules_dir} is not a mount")
        else:
            keys = source_keys(volumes.get(mounts[rules_dir]))
            if not keys or not any(k.endswith(".toml") for k in keys):
                fail(f"rules dir {rules_dir} holds no .toml file")
        for issuer, conf in settings.get("issuers", {}).items():
            for key in conf.get("keys", []):
                for field in ("pem_file", "jwks_file"):
                    if field in key:
                        full = resolve(key[field])
                        volume, inside = volume_of(full)
                        found = source_keys(volume)
                        if not found or inside not in found:
                            fail(f"issuer {issuer}: {full} is in no mounted ConfigMap or Secret")

    # Probes name ports the container has.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        p = container.get(probe)
        if p is None:
            fail(f"no {probe}")
            continue
        port = p.get("httpGet", {}).get("port")
        if port not in ports:
            fail(f"{probe} names port {port}, not a container port")
    if container.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
        fail("the readiness probe is not /readyz")
    if container.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
        fail("the liveness probe is not /healthz (a draining pod would be restarted)")

    sc = container.get("securityContext", {})
    if not sc.get("readOnlyRootFilesystem") or sc.get("allowPrivilegeEscalation", True):
        fail("the container's root filesystem is writable or it may escalate privileges")
    if not spec.get("securityContext", {}).get("runAsNonRoot"):
        fail("the pod may run as root")

    services = by_kind.get("Service", [])
    gateway_services = [s for s in services if matches(s["spec"].get("selector"), pod_labels)]
    if not gateway_services:
        fail("no Service selects the gateway pods")
    for s in gateway_services:
        for p in s["spec"]["ports"]:
            if p.get("targetPort") not in ports:
                fail(f"Service {s['metadata']['name']} targets port {p.get('targetPort')}")

    for pdb in by_kind.get("PodDisruptionBudget", []):
        if not matches(pdb["spec"]["selector"]["matchLabels"], pod_labels):
            fail(f"PodDisruptionBudget {pdb['metadata']['name']} selects no gateway pod")
    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        target = hpa["spec"]["scaleTargetRef"]
        if target["kind"] != "Deployment" or target["name"] not in deployments:
            fail(f"HorizontalPodAutoscaler {hpa['metadata']['name']} targets nothing rendered")
        if hpa["spec"].get("minReplicas", 1) < 2:
            fail("the autoscaler may scale to one replica: a rolling restart then has no peer")
    policies = [
        n for n in by_kind.get("NetworkPolicy", [])
        if matches(n["spec"]["podSelector"].get("matchLabels"), pod_labels)
    ]
    if not policies:
        fail("no NetworkPolicy guards the gateway pods (the admin port would be open)")
    for n in policies:
        for rule in n["spec"].get("ingress", []):
            names = {p.get("port") for p in rule.get("ports", [])}
            if "admin" in names and not rule.get("from"):
                fail(f"NetworkPolicy {n['metadata']['name']} opens the admin port to everyone")

    # The ServiceMonitor: no schema is bundled for this CRD, so its required shape is checked
    # here (monitoring.coreos.com/v1: spec.selector, spec.endpoints[].port).
    for sm in by_kind.get("ServiceMonitor", []):
        if sm.get("apiVersion") != "monitoring.coreos.com/v1":
            fail(f"ServiceMonitor apiVersion {sm.get('apiVersion')}")
        selector = sm.get("spec", {}).get("selector", {}).get("matchLabels")
        selected = [s for s in services if matches(selector, s["metadata"].get("labels", {}))]
        if not selector or not selected:
            fail("the ServiceMonitor selects no Service")
        for e in sm.get("spec", {}).get("endpoints", []):
            names = {p.get("name") for s in selected for p in s["spec"]["ports"]}
            if e.get("port") not in names:
                fail(f"the ServiceMonitor scrapes port {e.get('port')}, which no Service has")
            if e.get("path", "/metrics") != "/metrics":
                fail("the ServiceMonitor does not scrape /metrics")
    return problems


def main():
    problems = []
    for path in sys.argv[1:]:
        problems += check(path)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"consistent: {', '.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
