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


# -- Redis is a trust boundary: a password from a Secret, a network of its own, a job key ----------
def _container(deployment: str) -> dict[str, Any]:
    (found,) = [d for d in kind("Deployment") if d["metadata"]["name"] == deployment]
    (container,) = found["spec"]["template"]["spec"]["containers"]
    return {"container": container, "pod": found["spec"]["template"], "volumes": {
        v["name"]: v for v in found["spec"]["template"]["spec"]["volumes"]}}


def _secret_file(deployment: str, path: str) -> tuple[str, str]:
    """The (Secret, key) a file path in a Deployment's container comes from."""
    found = _container(deployment)
    for mount in found["container"]["volumeMounts"]:
        if path.startswith(mount["mountPath"].rstrip("/") + "/"):
            secret = found["volumes"][mount["name"]]["secret"]
            name = path[len(mount["mountPath"].rstrip("/")) + 1:]
            items = {i["path"]: i["key"] for i in secret.get("items", [])}
            return secret["secretName"], items.get(name, name)
    raise AssertionError(f"{path} is mounted from no Secret in {deployment}")


def _run_redis(script: str, secret_path: str, tmp_path: Path) -> tuple[Any, int]:
    """The deploy file's Redis command, for real, its secret file in tmp_path."""
    import socket
    import subprocess

    from tests.redis_server import redis_server_binary

    redis_server_binary()  # skips (fails under CI=true) without redis-server
    password = tmp_path / "password"
    password.write_text("pw-" + "1" * 20)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    script = script.replace(secret_path, str(password)).replace(
        "redis-server -", f"redis-server - --port {port} --bind 127.0.0.1 --dir {tmp_path}", 1)
    return subprocess.Popen(["sh", "-c", script], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL), port


def _asks_for_the_password(port: int) -> None:
    import redis

    from tests.waiting import wait_until

    def answers() -> bool:
        try:
            return bool(redis.Redis(port=port, password="pw-" + "1" * 20).ping())
        except redis.ConnectionError:
            return False

    wait_until(answers, 10, message="redis-server started from the deploy file's command")
    try:
        redis.Redis(port=port).ping()
    except redis.AuthenticationError:
        pass
    else:
        raise AssertionError("Redis answered without the password")


def test_kubernetes_redis_asks_for_the_secrets_password_and_eventd_gives_it(tmp_path):
    redis_pod = _container("eventd-redis")["container"]
    argv = redis_pod["command"]
    assert argv[:2] == ["sh", "-c"] and "requirepass $(cat /run/secrets/redis/redis-password)" \
        in argv[2] and "REPLACE-ME" not in argv[2]
    assert _secret_file("eventd-redis", "/run/secrets/redis/redis-password") == \
        ("eventd-cluster", "redis-password")
    env = {e["name"]: e.get("value") for e in _container("eventd")["container"]["env"]}
    assert _secret_file("eventd", env["EVENTD_STORE_PASSWORD_FILE"]) == \
        ("eventd-cluster", "redis-password")
    assert _secret_file("eventd", env["EVENTD_JOB_KEY_FILE"]) == ("eventd-cluster", "job-key")
    (secret,) = [s for s in kind("Secret") if s["metadata"]["name"] == "eventd-cluster"]
    assert set(secret["stringData"]) == {"redis-password", "job-key"}
    probe = " ".join(redis_pod["readinessProbe"]["exec"]["command"])
    assert "REDISCLI_AUTH" in probe and "/run/secrets/redis/redis-password" in probe
    process, port = _run_redis(argv[2], "/run/secrets/redis/redis-password", tmp_path)
    try:
        _asks_for_the_password(port)
    finally:
        process.terminate()
        process.wait(10)


def test_kubernetes_lets_only_eventd_reach_redis():
    (policy,) = kind("NetworkPolicy")
    spec = policy["spec"]
    redis_pod = _container("eventd-redis")
    eventd_pod = _container("eventd")
    assert spec["podSelector"]["matchLabels"].items() <= redis_pod["pod"]["metadata"]["labels"].items()
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"} and spec["egress"] == []
    (rule,) = spec["ingress"]
    (source,) = rule["from"]
    assert set(source) == {"podSelector"}  # pods of this namespace, no ipBlock, no namespaces
    assert source["podSelector"]["matchLabels"].items() <= \
        eventd_pod["pod"]["metadata"]["labels"].items()
    ports = {p["containerPort"] for p in redis_pod["container"]["ports"]}
    assert [p["port"] for p in rule["ports"]] == sorted(ports) == [6379]


def test_compose_redis_asks_for_the_secrets_password_on_a_network_of_its_own(tmp_path):
    (compose,) = docs(DEPLOY / "docker-compose.cluster.yml")
    services = compose["services"]
    redis_service, eventd = services["redis"], services["eventd"]
    script = redis_service["command"][2].replace("$$", "$")  # compose's escape of `$`
    assert redis_service["command"][:2] == ["sh", "-c"]
    assert "requirepass $(cat /run/secrets/redis-password)" in script
    assert redis_service["secrets"] == ["redis-password"]
    env = eventd["environment"]
    assert env["EVENTD_STORE_PASSWORD_FILE"] == "/run/secrets/redis-password"
    assert env["EVENTD_JOB_KEY_FILE"] == "/run/secrets/eventd-job-key"
    assert {"redis-password", "eventd-job-key"} <= set(eventd["secrets"])
    for name in ("redis-password", "eventd-job-key"):
        assert (DEPLOY / compose["secrets"][name]["file"]).is_file()
    assert compose["networks"]["store"]["internal"] is True
    on_store = sorted(n for n, s in services.items() if "store" in s.get("networks", []))
    assert on_store == ["eventd", "redis"] and redis_service["networks"] == ["store"]
    process, port = _run_redis(script, "/run/secrets/redis-password", tmp_path)
    try:
        _asks_for_the_password(port)
    finally:
        process.terminate()
        process.wait(10)


def test_the_secret_files_the_deploy_files_name_are_read_by_eventd(tmp_path):
    from eventd.settings import Settings

    (tmp_path / "pw").write_text("redis-pw\n")
    (tmp_path / "key").write_text("k" * 32 + "\n")
    settings = Settings.from_env({"EVENTD_STORE_PASSWORD_FILE": str(tmp_path / "pw"),
                                  "EVENTD_JOB_KEY_FILE": str(tmp_path / "key")})
    assert settings.store_password == "redis-pw" and settings.job_key == "k" * 32
    assert "redis-pw" not in repr(settings) and "k" * 32 not in repr(settings)
