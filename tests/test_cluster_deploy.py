"""deploy/kubernetes-cluster/ and deploy/docker-compose.cluster.yml agree with the code."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from eventd.cli import build_parser
from eventd.cluster.connection import is_cluster_store
from eventd.settings import parse_duration, parse_namespaces

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
K8S = DEPLOY / "kubernetes-cluster"


def docs(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kind(name: str) -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in docs(path)
            if doc["kind"] == name]


def test_kubernetes_runs_several_replicas_on_one_redis_and_keeps_the_single_one():
    deployments = {d["metadata"]["name"]: d for d in kind("Deployment")}
    eventd = deployments["eventd"]
    assert eventd["spec"]["replicas"] >= 2
    assert eventd["spec"]["strategy"]["type"] == "RollingUpdate"
    (container,) = eventd["spec"]["template"]["spec"]["containers"]
    argv = [str(a) for a in container["args"]]
    assert argv[:2] == ["eventd", "run"]
    args = build_parser().parse_args(argv[1:])  # every flag exists
    assert is_cluster_store(args.store)
    assert parse_duration(args.lease_ttl) == 10.0
    host = urlsplit(args.store).hostname
    services = {s["metadata"]["name"]: s for s in kind("Service")}
    assert host in services and host in deployments
    assert services[host]["spec"]["ports"][0]["port"] == urlsplit(args.store).port
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert len(parse_namespaces(env["DOCKERCLOUD_NAMESPACE"])) >= 2
    assert kind("PodDisruptionBudget")[0]["spec"]["maxUnavailable"] == 1
    # The single-replica variant stays as it was.
    single = docs(DEPLOY / "kubernetes" / "deployment.yaml")[0]
    assert single["spec"]["replicas"] == 1


def test_compose_cluster_has_redis_and_replicas_pointed_at_it():
    (compose,) = docs(DEPLOY / "docker-compose.cluster.yml")
    services = compose["services"]
    eventd = services["eventd"]
    assert eventd["deploy"]["replicas"] >= 2
    argv = [str(a) for a in eventd["command"]]
    assert argv[:2] == ["eventd", "run"]
    args = build_parser().parse_args(argv[1:])
    assert is_cluster_store(args.store) and urlsplit(args.store).hostname in services
    assert eventd["depends_on"]["redis"]["condition"] == "service_healthy"
    env = eventd["environment"]
    emulate = services["emulator"]["command"]
    served = emulate[emulate.index("--namespace") + 1].split(",")
    assert set(parse_namespaces(env["DOCKERCLOUD_NAMESPACE"])) <= set(served)
    assert parse_duration(args.lease_ttl) == 10.0
