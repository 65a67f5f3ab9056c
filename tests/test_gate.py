"""The gate (issue 20): every action's request passes one place, with a policy from configuration.

Findings 1, 2, 6 and 7 each have a test here that failed before the gate (on main, the request
was made: the receiver, the emulator or dockerd shows it); the rest pins the gate's own parts:
job MACs through every store, the rule check, the policies, eventd's own container.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import pytest

from eventd.actions.docker import DockerAction
from eventd.actions.webhook import WebhookAction
from eventd.daemon import Daemon
from eventd.delivery.dispatcher import Dispatcher
from eventd.delivery.gate import REASONS, Gate, Grant, Policy
from eventd.delivery.policies import own_container_id
from eventd.delivery.signing import KEY_FILE, JobSigner, load_signer
from eventd.emulator.world import DEFAULT_CONTAINER_UUIDS, DEFAULT_NODE_UUIDS, DEFAULT_SERVICE_UUIDS
from eventd.errors import GateRefused
from eventd.ops.metrics import Metrics
from eventd.records import ActionJob
from eventd.settings import Settings
from eventd.stores.sqlite import SqliteStore
from tests.actions import attempt, gate_for, make_context, make_job, sample
from tests.daemon_helpers import emulator_env, start_daemon
from tests.docker_engine import DockerEngine
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
SERVE = "trap 'exit 0' TERM; sleep 1000 & wait"


def dispatch(metrics: Metrics, settings: Settings, tmp_path: Path, *jobs_of) -> tuple:
    """A webhook dispatcher on `settings`, the jobs `jobs_of(hook)` delivered; (store, hook)."""
    context = make_context(metrics)
    context.settings = settings
    hook = WebhookAction(context)
    store = SqliteStore(tmp_path / "state")
    dispatcher = Dispatcher(context, store, {"webhook": hook})
    dispatcher.start()
    try:
        for make in jobs_of:
            dispatcher.submit(make(hook))
        assert dispatcher.wait_idle(10)
    finally:
        dispatcher.close(2)
        hook.close()
    return store


# -- finding 7: --allow-host and a URL two parsers read differently --------------------------------
@pytest.mark.parametrize("template, reason", [
    ("http://127.0.0.1:{port}\\@hooks.allowed.example/x", "url"),   # the reported one
    ("http://127.0.0.1:{port}\t@hooks.allowed.example/x", "url"),
    ("http://hooks.allowed.example@127.0.0.1:{port}/x", "host"),    # user info, not the host
    ("http://127.0.0.1:{port}#@hooks.allowed.example/x", "host"),   # a fragment
    ("http://127.0.0.1:{port}/@hooks.allowed.example", "host"),
    ("http://127.0.0.1:{port}\r\n@hooks.allowed.example/x", "url"),
])
def test_allow_host_holds_for_every_way_of_writing_another_host(metrics, webhook_receiver,
                                                                tmp_path, caplog, template, reason):
    port = webhook_receiver.url.rsplit(":", 1)[1]
    url = template.format(port=port)
    caplog.set_level(logging.INFO)
    store = dispatch(metrics, Settings(allow_hosts=("hooks.allowed.example",)), tmp_path,
                     lambda hook: make_job(hook, {"url": url, "json": {"x": 1},
                                                  "headers": {"X-Secret": "s3cret-header"}}))
    try:
        assert webhook_receiver.requests == []  # on main: the request, secret header and all
        [letter] = store.deadletter_list()
    finally:
        store.close()
    assert "refused, no request made" in letter.reason
    assert sample(metrics, "eventd_gate_refused_total", kind="webhook", reason=reason) == 1
    # Nothing was sent, so no line names a destination; and never the allowed host.
    assert "hooks.allowed.example:80" not in caplog.text
    assert "s3cret-header" not in caplog.text


def test_what_was_sent_is_what_the_log_names(metrics, webhook_receiver, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    url = webhook_receiver.url.replace("127.0.0.1", "127.0.0.1.") + "/a/%2F?b=%41"
    store = dispatch(metrics, Settings(allow_hosts=("127.0.0.1",)), tmp_path,
                     lambda hook: make_job(hook, {"url": url, "json": {}}))
    store.close()
    [request] = webhook_receiver.requests
    assert request.path == "/a/%2F?b=A"
    assert f"webhook for rule rule-a: POST {webhook_receiver.url}: HTTP 200" in caplog.text


def test_credentials_go_in_clear_only_to_this_machine_unless_allowed(metrics, webhook_receiver):
    # 0.0.0.0 reaches the receiver on 127.0.0.1, yet it is not a loopback address.
    url = webhook_receiver.url.replace("127.0.0.1", "0.0.0.0") + "/hook"
    context = make_context(metrics)
    hook = WebhookAction(context)
    try:
        with pytest.raises(GateRefused, match="credentials would go in clear") as info:
            attempt(hook, make_job(hook, {"url": url, "json": {},
                                          "headers": {"Authorization": "Bearer t0ken"}}))
        assert info.value.reason == "plaintext"
        with pytest.raises(GateRefused, match="credentials would go in clear"):
            attempt(hook, make_job(hook, {"url": url.replace("://", "://bob:pw@"), "json": {}}))
        assert webhook_receiver.requests == []
        attempt(hook, make_job(hook, {"url": url, "json": {}}))  # no secret: fine
        context.settings = Settings(allow_plaintext=True)
        attempt(hook, make_job(hook, {"url": url.replace("://", "://bob:pw@"), "json": {}}))
        attempt(hook, make_job(hook, {"url": webhook_receiver.url, "json": {},
                                      "headers": {"X-Api-Key": "k"}}))  # loopback: fine
    finally:
        hook.close()
    first, second, third = webhook_receiver.requests
    assert first.header("Authorization") is None
    assert second.header("Authorization") == "Basic Ym9iOnB3"  # user info, sent explicitly
    assert third.header("X-Api-Key") == "k"


def test_allow_plaintext_from_the_command_line_and_the_environment():
    from eventd.cli import _settings, build_parser

    parser = build_parser()
    assert _settings(parser.parse_args(["run", "--allow-plaintext"]), {}).allow_plaintext
    assert _settings(parser.parse_args(["run"]), {"EVENTD_ALLOW_PLAINTEXT": "true"}).allow_plaintext
    assert not _settings(parser.parse_args(["run"]), {}).allow_plaintext


# -- finding 1: an event's `namespace` key -----------------------------------------------------------
@pytest.mark.parametrize("namespace", [
    "../../../api/infra/v1/user/node/{node}/docker-upgrade/?x=",  # the reported traversal
    "otherorg",                                                   # another organisation
    "user/../../../infra/v1/user/node/{node}",
    5, ["user"], {"a": 1},
])
def test_an_events_namespace_key_never_moves_a_dockercloud_call(tmp_path, namespace):
    from eventd.emulator import Emulator

    node = DEFAULT_NODE_UUIDS[0]
    web, web_1 = DEFAULT_SERVICE_UUIDS["web"], DEFAULT_CONTAINER_UUIDS["web-1"]
    rules = tmp_path / "rules"
    rules.mkdir()
    shutil.copy(ROOT / "rules" / "redeploy-stopped.yaml", rules)
    with Emulator(tick=0.02, namespaces=("otherorg",)) as emu:
        daemon = start_daemon(emu, rules, tmp_path / "state")
        try:
            assert emu.wait_for_connections(1, 10)
            emu.emit(emu.complete_event({
                "type": "container", "action": "update", "state": "Stopped",
                "resource_uri": f"/api/app/v1/container/{web_1}/",
                "parents": [f"/api/app/v1/service/{web}/"],
                "namespace": namespace.format(node=node) if isinstance(namespace, str)
                else namespace}))
            wait_until(lambda: [c for c in emu.rest_calls() if c.method != "GET"], 10,
                       message="the redeploy was made")
            assert daemon.wait_idle(5)
            calls = [(c.method, c.path) for c in emu.rest_calls() if c.method != "GET"]
            # on main: POST /api/infra/v1/user/node/<uuid>/docker-upgrade/, or a call in otherorg
            assert calls == [("POST", f"/api/app/v1/service/{web}/redeploy/")]
            assert emu.world.get("node", node)["state"] == "Deployed"
        finally:
            daemon.stop(timeout=5)


def test_a_namespace_eventd_serves_is_the_streams_own(emulator, tmp_path):
    """With DOCKERCLOUD_NAMESPACE, an un-namespaced target is called in the namespace of the
    stream its event came from: eventd sets `namespace`, whatever the event said."""
    web, web_1 = DEFAULT_SERVICE_UUIDS["web"], DEFAULT_CONTAINER_UUIDS["web-1"]
    rules = tmp_path / "rules"
    rules.mkdir()
    shutil.copy(ROOT / "rules" / "redeploy-stopped.yaml", rules)
    daemon = start_daemon(emulator, rules, tmp_path / "state",
                          env=emulator_env(emulator, DOCKERCLOUD_NAMESPACE="user"))
    try:
        assert emulator.wait_for_connections(1, 10)
        emulator.emit(emulator.complete_event({
            "type": "container", "action": "update", "state": "Stopped",
            "resource_uri": f"/api/app/v1/container/{web_1}/",
            "parents": [f"/api/app/v1/service/{web}/"], "namespace": "otherorg"}))
        wait_until(lambda: [c for c in emulator.rest_calls() if c.method != "GET"], 10,
                   message="the redeploy was made")
        calls = [(c.method, c.path) for c in emulator.rest_calls() if c.method != "GET"]
        assert calls == [("POST", f"/api/app/v1/user/service/{web}/redeploy/")]
    finally:
        daemon.stop(timeout=5)


def test_a_namespace_neither_configured_nor_the_users_own_is_refused(emulator, metrics):
    """A target naming another namespace (a parent in event data) is refused at the gate."""
    from eventd.actions.dockercloud import DockerCloudAction
    from eventd.clients.dockercloud.auth import Credentials
    from eventd.clients.dockercloud.rest import RestClient

    rest = RestClient(emulator.rest_url, Credentials(header=emulator.auth_header, source="t"))
    action = DockerCloudAction(make_context(metrics, rest=rest))
    web = DEFAULT_SERVICE_UUIDS["web"]
    try:
        for target in (f"/api/app/v1/otherorg/service/{web}/", f"/api/app/v1/o.rg/service/{web}/"):
            with pytest.raises(GateRefused, match="is not one eventd serves") as info:
                attempt(action, make_job(action, {"call": "redeploy", "target": target}))
            assert info.value.reason == "namespace"
        assert emulator.rest_calls() == []
        attempt(action, make_job(action, {"call": "redeploy",
                                          "target": f"/api/app/v1/user/service/{web}/"}))
        assert [(c.method, c.path) for c in emulator.rest_calls()] == \
            [("POST", f"/api/app/v1/user/service/{web}/redeploy/")]
    finally:
        rest.close()


# -- finding 2: a spool job written into Redis by hand -------------------------------------------
def test_a_job_written_into_redis_by_hand_is_a_dead_letter_not_a_call(emulator, tmp_path,
                                                                      redis_url, redis_cluster):
    from eventd.stores.redis import RedisStore

    node = f"/api/infra/v1/user/node/{DEFAULT_NODE_UUIDS[0]}/"
    web = emulator.world.uri("service", DEFAULT_SERVICE_UUIDS["web"])
    forged = [
        # the reported one: a DELETE of a node, for a rule that does not exist, no MAC
        ActionJob(id="forged-delete-node", rule="no-such-rule", kind="dockercloud",
                  options={"method": "DELETE", "path": node}, event={}, target="dockercloud",
                  created_at=time.time()),
        # one a loaded rule could make, with a MAC made up
        ActionJob(id="forged-redeploy", rule="redeploy-stopped", kind="dockercloud",
                  options={"call": "redeploy", "target": web}, event={}, target="dockercloud",
                  created_at=time.time(), mac="v1:" + "0" * 64),
    ]
    rules = tmp_path / "rules"
    rules.mkdir()
    shutil.copy(ROOT / "rules" / "redeploy-stopped.yaml", rules)
    # A replica ran and stopped; meanwhile someone with access to Redis wrote the spool.
    first = start_daemon(emulator, rules, tmp_path / "state", store=redis_url,
                         cluster=redis_cluster)
    wait_until(lambda: first.consumer is not None and first.consumer.connected, 10,
               message="the first replica consumed the stream")
    first.stop(timeout=5)
    attacker = RedisStore.open(Settings(store=redis_url, cluster=redis_cluster))
    try:
        for job in forged:
            assert attacker.spool_add(job)
    finally:
        attacker.close()
    daemon = start_daemon(emulator, rules, tmp_path / "state", store=redis_url,
                          cluster=redis_cluster)  # takes the stream over: resumes the spool
    try:
        wait_until(lambda: daemon.store.deadletter_count() == 2, 15,
                   message="both forged jobs dead-lettered")
        letters = {letter.job.id: letter.reason for letter in daemon.store.deadletter_list()}
        registry = daemon.metrics.registry
    finally:
        daemon.stop(timeout=5)
    # on main: DELETE <node> and POST <web>redeploy/ were made at this start
    assert [c for c in emulator.rest_calls() if c.method != "GET"] == []
    assert emulator.world.get("node", DEFAULT_NODE_UUIDS[0])["state"] == "Deployed"
    assert "the job carries no MAC" in letters["forged-delete-node"]
    assert "MAC does not verify" in letters["forged-redeploy"]
    for reason in ("unsigned", "mac"):
        assert registry.get_sample_value("eventd_gate_refused_total",
                                         {"kind": "dockercloud", "reason": reason}) == 1


# -- the gate's parts ------------------------------------------------------------------------------
def job_of(**fields) -> ActionJob:
    values = {"id": "j1", "rule": "r", "kind": "webhook", "target": "webhook:https://h.example:443",
              "options": {"url": "https://h.example/x", "json": {"t": "{{ x }}"}},
              "event": {"type": "container", "n": 1.5}, "created_at": 1.0}
    values.update(fields)
    return ActionJob(**values)


def test_a_jobs_mac_survives_every_store_and_nothing_else(store_and_reopen):
    store, reopen = store_and_reopen
    signer = JobSigner(b"k" * 32, "test")
    job = job_of(event={"type": "container", "big": 2 ** 70, "f": 0.1, "u": "é\u2028",
                        "nested": [{"b": 1, "a": None}]})
    job.mac = signer.sign(job)
    assert store.spool_add(job)
    store = reopen(store)
    [back] = store.spool_pending()
    assert signer.verify(back)
    back.attempts, back.context = 7, {"action_uri": "/api/audit/v1/action/x/"}  # not signed
    assert signer.verify(back)
    for change in ({"rule": "r2"}, {"kind": "dockercloud"}, {"target": "webhook:http://e:80"},
                   {"options": {"url": "https://evil.example/x"}}, {"event": {}},
                   {"id": "j2"}):
        forged = ActionJob.from_dict({**back.to_dict(), **change})
        assert not signer.verify(forged), change
    assert not JobSigner(b"x" * 32, "other").verify(back)


def test_the_job_key_comes_from_the_setting_or_stays_beside_the_state(tmp_path, caplog):
    common = {"store": "sqlite", "cluster": "c", "credentials_header": None, "shared": False}
    job = job_of()
    explicit = load_signer(job_key="s" * 32, state_dir=tmp_path / "a", **common)
    assert explicit.source == "EVENTD_JOB_KEY" and not (tmp_path / "a").exists()
    first = load_signer(job_key=None, state_dir=tmp_path / "b", **common)
    again = load_signer(job_key=None, state_dir=tmp_path / "b", **common)
    assert first.sign(job) == again.sign(job) != explicit.sign(job)
    key = tmp_path / "b" / KEY_FILE
    assert key.stat().st_mode & 0o777 == 0o600
    assert "no EVENTD_JOB_KEY" in caplog.text and "s" * 32 not in caplog.text
    # Redis: derived from the credentials (every replica has them, Redis does not), per cluster.
    shared = {"job_key": None, "store": "redis://r", "state_dir": tmp_path / "c", "shared": True}
    one = load_signer(cluster="c1", credentials_header="Basic abc", **shared)
    two = load_signer(cluster="c1", credentials_header="Basic abc", **shared)
    other = load_signer(cluster="c2", credentials_header="Basic abc", **shared)
    assert one.sign(job) == two.sign(job) != other.sign(job)
    assert not (tmp_path / "c").exists()  # nothing kept anywhere Redis' writers could read


def test_a_key_file_that_is_not_ours_alone_is_refused(tmp_path):
    from eventd.errors import ConfigError

    state = tmp_path / "state"
    state.mkdir()
    (state / KEY_FILE).write_text("k" * 64)
    (state / KEY_FILE).chmod(0o644)
    with pytest.raises(ConfigError, match="only its owner can read"):
        load_signer(job_key=None, store="sqlite", cluster="c", state_dir=state,
                    credentials_header=None, shared=False)
    (state / KEY_FILE).unlink()
    (state / KEY_FILE).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConfigError):
        load_signer(job_key=None, store="sqlite", cluster="c", state_dir=state,
                    credentials_header=None, shared=False)
    assert not (tmp_path / "elsewhere").exists()


def test_a_job_must_be_one_a_loaded_rule_can_produce(metrics):
    rules = {"r": (Grant("webhook", {"url": "https://h.example/x"}, frozenset({"url", "json"}),
                         "webhook:https://h.example:443"),),
             "d": (Grant("dockercloud", {"call": "redeploy"}, frozenset({"call", "target"}),
                         "dockercloud"),)}
    gate = Gate(Policy(), metrics, rules=rules)
    assert gate.check_job(job_of(), durable=True) is rules["r"][0]
    refused = {
        "rule": job_of(rule="gone"),
        "kind": job_of(kind="alertmanager"),
        "options": job_of(options={"url": "https://evil.example/x"}),
    }
    for reason, job in refused.items():
        with pytest.raises(GateRefused) as info:
            gate.check_job(job, durable=True)
        assert info.value.reason == reason
    for options in ({"method": "DELETE", "path": "/api/infra/v1/node/x/"},
                    {"call": "terminate", "target": "/api/app/v1/service/x/"}):
        with pytest.raises(GateRefused) as info:
            gate.check_job(job_of(rule="d", kind="dockercloud", target="dockercloud",
                                  options=options), durable=True)
        assert info.value.reason == "options"
    with pytest.raises(GateRefused):
        gate.check_job(job_of(target="webhook:https://evil.example:443"), durable=True)
    gate.use_rules({"other": ()})  # a reload: what the old rules could produce stays admitted
    assert gate.check_job(job_of(), durable=True) is rules["r"][0]
    assert {labels["reason"] for labels in _refusals(metrics)} <= set(REASONS)


def _refusals(metrics: Metrics) -> list[dict[str, str]]:
    return [sample.labels for family in metrics.registry.collect()
            if family.name == "eventd_gate_refused" for sample in family.samples
            if sample.name.endswith("_total")]


def test_signed_jobs_pass_and_unsigned_durable_ones_do_not(metrics):
    signer = JobSigner(b"k" * 32, "test")
    gate = Gate(Policy(), metrics, signer=signer)
    job = job_of()
    gate.sign(job)
    assert gate.check_job(job, durable=True) is None
    job.mac = ""
    with pytest.raises(GateRefused, match="carries no MAC"):
        gate.check_job(job, durable=True)
    gate.check_job(job, durable=False)  # log and audit never go through a store


@pytest.mark.parametrize("files, hostname, expected", [
    ({"cgroup": "12:memory:/docker/" + "a" * 64 + "\n1:name=systemd:/docker/" + "a" * 64},
     "host", "a" * 64),
    ({"cgroup": "0::/system.slice/docker-" + "b" * 64 + ".scope\n"}, "host", "b" * 64),
    ({"cgroup": "0::/\n", "mountinfo":
      "1 2 0:1 /var/lib/docker/containers/" + "c" * 64 + "/hostname /etc/hostname rw - ext4\n"},
     "host", "c" * 64),
    ({"cgroup": "0::/user.slice\n", "mountinfo": "1 2 0:1 / / rw - ext4\n"}, "0123456789ab",
     "0123456789ab"),
    ({"cgroup": "0::/user.slice\n"}, "build-host", None),
    ({}, "build-host", None),
])
def test_eventd_finds_its_own_container(tmp_path, files, hostname, expected):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert own_container_id(tmp_path, hostname=hostname) == expected


# -- finding 6: a docker action by name ------------------------------------------------------------
def test_a_container_named_with_anothers_id_cannot_get_it_restarted(docker_engine: DockerEngine,
                                                                    tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "rules.yaml").write_text("""rules:
  - name: restart-died
    match: {type: container, action: die, attributes.exitCode: {not: "0"}}
    actions:
      - docker: {call: restart, target: "{{ event.name }}", timeout: 1}
""")
    env = {"DOCKER_HOST": docker_engine.host, "HOME": "/nonexistent"}
    settings = Settings.from_env(env, source="docker", rules=(rules,), state_dir=tmp_path / "s",
                                 backoff_initial=0.05, backoff_max=0.3, healthy_after=1.0,
                                 shutdown_timeout=5.0, self_container="gate-self")
    daemon = Daemon(settings, None, env, Metrics())
    daemon.start()
    victim = docker_engine.run("gate-victim", ["sh", "-c", SERVE])
    try:
        wait_until(lambda: daemon.consumer.connected, 10, message="eventd connected to the Engine")
        started = _state(docker_engine, "gate-victim")["StartedAt"]
        docker_engine.run(victim, ["sh", "-c", "exit 1"])  # named with the victim's full id
        docker_engine.run("gate-self", ["sh", "-c", "exit 1"])  # eventd's own container
        docker_engine.run("gate-plain", ["sh", "-c", "sleep 0.3; exit 1"])  # its own: restarted
        metrics = daemon.metrics.registry

        def refused(reason: str) -> float:
            return metrics.get_sample_value("eventd_gate_refused_total",
                                            {"kind": "docker", "reason": reason}) or 0

        wait_until(lambda: refused("container") == 1 and refused("self") == 1, 15,
                   message="both refused at the gate")
        wait_until(lambda: (metrics.get_sample_value(
            "eventd_actions_total", {"kind": "docker", "outcome": "success"}) or 0) >= 1, 15,
            message="gate-plain restarted")
        # on main: the victim was restarted (the Engine resolves a full id before a name)
        assert _state(docker_engine, "gate-victim")["StartedAt"] == started
        reasons = [letter.reason for letter in daemon.store.deadletter_list()]
        assert any("neither the event's own container nor one rule restart-died names" in r
                   for r in reasons), reasons
        assert any("container gate-self is eventd's own" in r for r in reasons), reasons
    finally:
        daemon.stop(timeout=5)
        docker_engine.remove("gate-victim", victim, "gate-self", "gate-plain")


def _state(engine: DockerEngine, name: str) -> dict:
    with engine.client() as client:
        return client.inspect_container(name)["State"]


def test_a_rule_may_name_a_container_literally(docker_engine: DockerEngine, metrics):
    context = make_context(metrics)
    context.settings = Settings(docker_host=docker_engine.host)
    docker = DockerAction(context)
    cid = docker_engine.run("gate-literal", ["sh", "-c", SERVE])
    other = docker_engine.run("gate-other", ["sh", "-c", SERVE])
    literal = {"r": (Grant("docker", {"call": "restart", "target": "gate-literal"},
                           frozenset({"call", "target", "timeout"}), "docker"),),
               "t": (Grant("docker", {"call": "restart"}, frozenset({"call", "target"}),
                           "docker"),)}
    gate = gate_for(docker, rules=literal)
    try:
        assert attempt(docker, make_job(docker, {"call": "restart", "target": "gate-literal",
                                                 "timeout": 1}, rule="r"), gate=gate) \
            == f"restart gate-literal ({cid[:12]})"
        with pytest.raises(GateRefused, match="neither the event's own"):  # a template's target
            attempt(docker, make_job(docker, {"call": "restart", "target": other}, rule="t"),
                    gate=gate)
    finally:
        docker.close()
        docker_engine.remove("gate-literal", "gate-other")


@pytest.mark.parametrize("target", ["../../images/json", "a/b", "x?y", "web 1", "-x", "a" * 300])
def test_a_docker_target_that_names_no_container_asks_the_engine_nothing(metrics, tmp_path, target):
    """docker-py builds the inspect URL from the target (`/` kept): `../../images/json` would
    have been a GET of another endpoint."""
    context = make_context(metrics)
    context.settings = Settings(docker_host=f"unix://{tmp_path}/no-engine.sock")
    docker = DockerAction(context)  # any request would fail to connect: a retryable error
    with pytest.raises(GateRefused, match="is not a container name or id") as info:
        attempt(docker, make_job(docker, {"call": "restart", "target": target}))
    assert info.value.reason == "container"
