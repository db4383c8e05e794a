"""Validates the Kubernetes manifests in a directory (deploy/kubernetes).

Usage: validate_k8s.py DIR

- Every core object, strictly (unknown fields are errors), against the Kubernetes schemas that
  kubernetes-validate carries, for the oldest and newest versions we support.
- The KServe ServingRuntime against what its CRD requires (spec.containers, each a valid core
  container, model formats with names, known protocol versions).
- What no schema sees: the Service and the budget select the pods, the autoscaler and the
  budget name the Deployment, probes and ports agree with --bind, every mount has a volume,
  the hardening is there, the grace period outlasts the server's shutdown timeout.
Prints one line per check; exits 1 naming the first problem.
"""

import os
import re
import sys

import kubernetes_validate
import yaml

from checks import check, fail

VERSIONS = ["1.30.0", "1.37.0"]
SHUTDOWN_TIMEOUT_S = 25  # motion-host serve's default --shutdown-timeout


def validate_core(obj, where):
    for version in VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            fail(f"{where}: invalid for Kubernetes {version}: {e.message} at {list(e.path)}")
        except kubernetes_validate.SchemaNotFoundError as e:
            fail(f"{where}: no schema for {obj.get('apiVersion')}/{obj.get('kind')} in {version}: {e}")


def load(directory):
    objects = {}
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".yaml") or name == "kustomization.yaml":
            continue
        with open(os.path.join(directory, name)) as f:
            for obj in yaml.safe_load_all(f):
                if obj:
                    objects[(obj["kind"], obj["metadata"]["name"])] = (obj, name)
    return objects


def main():
    directory = sys.argv[1]
    objects = load(directory)
    kinds = {kind for kind, _ in objects}
    for wanted in ["Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                   "PersistentVolumeClaim", "ServingRuntime"]:
        check(wanted in kinds, f"no {wanted} in {directory}")

    for (kind, name), (obj, file) in objects.items():
        if kind == "ServingRuntime":
            continue
        validate_core(obj, f"{file} {kind}/{name}")
        print(f"ok  {file}: {kind}/{name} valid for Kubernetes {', '.join(VERSIONS)} (strict)")

    deployment = next(o for (k, _), (o, _) in objects.items() if k == "Deployment")
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    spec = pod["spec"]
    check(deployment["spec"]["selector"]["matchLabels"].items() <= labels.items(),
          "the Deployment's selector does not match its pods")
    container = spec["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    bind = [a for a in container.get("args", []) if a.startswith("--bind=")]
    check(len(bind) == 1, "the container passes no --bind=")
    bind_port = int(re.search(r":(\d+)$", bind[0]).group(1))
    check(bind_port in ports.values(), f"--bind port {bind_port} is not a containerPort {ports}")
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"]:
        get = container.get(probe, {}).get("httpGet")
        check(get is not None, f"no {probe}")
        check(get["port"] in ports or get["port"] in ports.values(), f"{probe} port {get['port']} is not a container port")
        check(get.get("scheme") == "HTTPS", f"{probe} is not over HTTPS")
    check(container["livenessProbe"]["httpGet"]["path"] == "/health/live", "liveness is not /health/live")
    check(container["readinessProbe"]["httpGet"]["path"] == "/health/ready", "readiness is not /health/ready")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for c in spec["containers"] + spec.get("initContainers", []):
        for mount in c.get("volumeMounts", []):
            check(mount["name"] in volumes, f"{c['name']} mounts '{mount['name']}', which is no volume")
        sc = c.get("securityContext", {})
        check(sc.get("allowPrivilegeEscalation") is False, f"{c['name']}: privilege escalation not off")
        check(sc.get("readOnlyRootFilesystem") is True, f"{c['name']}: root filesystem not read-only")
        check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{c['name']}: capabilities not dropped")
        check("requests" in c.get("resources", {}) and "limits" in c.get("resources", {}), f"{c['name']}: no requests and limits")
    check(spec["securityContext"].get("runAsNonRoot") is True, "pods may run as root")
    tls = [m for m in container["volumeMounts"] if m["mountPath"] == "/etc/motion-host/tls"]
    check(tls and volumes[tls[0]["name"]].get("secret"), "no TLS secret at /etc/motion-host/tls")
    check(any(m["mountPath"] == "/tmp" for m in container["volumeMounts"]), "nothing writable at /tmp")
    check(spec.get("terminationGracePeriodSeconds", 30) > SHUTDOWN_TIMEOUT_S,
          "the grace period does not outlast --shutdown-timeout")
    claims = {v["persistentVolumeClaim"]["claimName"] for v in volumes.values() if "persistentVolumeClaim" in v}
    for claim in claims:
        check(("PersistentVolumeClaim", claim) in objects, f"volume claim {claim} is not in {directory}")
    print("ok  deployment: selector, --bind and ports, probes, volumes, hardening, grace period")

    for (kind, name), (obj, _) in objects.items():
        if kind == "Service":
            check(obj["spec"]["selector"].items() <= labels.items(), f"Service {name} selects no pod")
            for p in obj["spec"]["ports"]:
                check(p["targetPort"] in ports or p["targetPort"] in ports.values(), f"Service {name} targets no port")
        if kind == "PodDisruptionBudget":
            check(obj["spec"]["selector"]["matchLabels"].items() <= labels.items(), f"budget {name} selects no pod")
        if kind == "HorizontalPodAutoscaler":
            target = obj["spec"]["scaleTargetRef"]
            check((target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"]),
                  f"autoscaler {name} targets {target}")
    print("ok  service, budget and autoscaler point at the Deployment's pods")

    runtime, file = next((o, f) for (k, _), (o, f) in objects.items() if k == "ServingRuntime")
    check(runtime["apiVersion"] == "serving.kserve.io/v1alpha1", f"{file}: apiVersion {runtime['apiVersion']}")
    rspec = runtime["spec"]
    check(rspec.get("containers"), f"{file}: spec.containers is required")
    for fmt in rspec.get("supportedModelFormats", []):
        check(fmt.get("name"), f"{file}: a model format has no name")
        if "priority" in fmt:
            check(fmt.get("autoSelect") and fmt["priority"] >= 1, f"{file}: priority needs autoSelect and ≥ 1")
    check(set(rspec.get("protocolVersions", [])) <= {"v1", "v2", "grpc-v1", "grpc-v2"}, f"{file}: unknown protocol")
    as_pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "servingruntime"},
              "spec": {"containers": rspec["containers"], "volumes": rspec.get("volumes", [])}}
    validate_core(as_pod, f"{file} spec.containers/volumes")
    images = {c["image"] for c in spec["containers"] + spec.get("initContainers", []) + rspec["containers"]}
    check(len(images) == 1, f"the manifests name several images: {images}")
    print(f"ok  {file}: ServingRuntime fields as KServe's CRD requires; containers valid (strict)")


if __name__ == "__main__":
    main()
