"""The docker-compose broker's access rules, on a real Mosquitto started with the shipped
deploy/mosquitto/mosquitto.conf and acl (paths moved into a temp dir) and a password file
written by the shipped init script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from tests.helpers.servers import (
    free_port,
    mosquitto_binary,
    run_mosquitto,
    wait_for_port,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "mosquitto"
GATEWAY_USER = "karkhana-gateway"
PASSWORDS = {GATEWAY_USER: "gateway-password-from-test", "edge-a": "edge-a-password-from-test"}
# A second agent's account, added through extra.passwd as docs/deployment.md describes.
EDGE_B_PASSWORD = "edge-b-password-from-test"
EXTRA_EDGE_A_PASSWORD = "edge-a-password-from-extra-file"


@dataclass
class Broker:
    port: int
    log: Path


def adapt_config(shipped: str, port: int, workdir: Path) -> str:
    """The shipped mosquitto.conf with its listener, file paths and persistence moved into
    ``workdir``; every other line as shipped."""
    replaced: set[str] = set()
    lines = []
    for line in shipped.splitlines():
        key = line.split(None, 1)[0] if line.strip() and not line.startswith("#") else ""
        new = {
            "listener": f"listener {port} 127.0.0.1",
            "password_file": f"password_file {workdir / 'passwd'}",
            "acl_file": f"acl_file {workdir / 'acl'}",
            "persistence": "persistence false",
            "persistence_location": "",
            "log_dest": f"log_dest file {workdir / 'mosquitto.log'}",
        }.get(key)
        if new is not None:
            replaced.add(key)
            line = new
        lines.append(line)
    assert replaced >= {"listener", "password_file", "acl_file"}, replaced
    return "\n".join(lines) + "\nlog_type all\n"


@pytest.fixture
def broker() -> Iterator[Broker]:
    if shutil.which("mosquitto_passwd") is None:
        pytest.fail("mosquitto_passwd is required (apt-get install mosquitto)")
    # Mosquitto started as root reads its files as the user "mosquitto": a directory it
    # can enter, as in the container.
    with tempfile.TemporaryDirectory(prefix="karkhana-acl-") as name:
        workdir = Path(name)
        workdir.chmod(0o755)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("MQTT_", "KARKHANA_"))},
            "MQTT_PASSWD_FILE": str(workdir / "passwd"),
            "KARKHANA_EDGE_AGENT_ID": "edge-a",
            "MQTT_GATEWAY_PASSWORD": PASSWORDS[GATEWAY_USER],
            "MQTT_EDGE_PASSWORD": PASSWORDS["edge-a"],
        }
        # A further agent the documented way (extra.passwd), and an entry there that tries
        # to replace edge-a's password from .env (ignored).
        extra = str(workdir / "extra.passwd")
        for flags, user, password in (
            (["-c"], "edge-b", EDGE_B_PASSWORD),
            ([], "edge-a", EXTRA_EDGE_A_PASSWORD),
        ):
            subprocess.run(
                ["mosquitto_passwd", *flags, "-b", extra, user, password], check=True, timeout=30
            )
        subprocess.run(["sh", str(DEPLOY / "init.sh")], env=env, check=True, timeout=30)
        shutil.copy(DEPLOY / "acl", workdir / "acl")
        (workdir / "acl").chmod(0o644)
        port = free_port()
        config = workdir / "mosquitto.conf"
        config.write_text(adapt_config((DEPLOY / "mosquitto.conf").read_text(), port, workdir))
        config.chmod(0o644)
        log = workdir / "mosquitto.log"
        process = subprocess.Popen(
            [mosquitto_binary(), "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(port)
            yield Broker(port, log)
        finally:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


@dataclass
class Client:
    """A paho client that records its connection result and the messages it receives."""

    paho: mqtt.Client
    connected: threading.Event = field(default_factory=threading.Event)
    connack: ReasonCode | None = None
    received: list[tuple[str, bytes]] = field(default_factory=list)
    granted: list[int] = field(default_factory=list)
    published: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def topics(self) -> list[str]:
        with self.lock:
            return [t for t, _ in self.received]

    def payloads(self) -> list[bytes]:
        with self.lock:
            return [p for _, p in self.received]


def connect(port: int, user: str | None, password: str | None, v5: bool = False) -> Client:
    paho = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"{user or 'anon'}-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
    )
    client = Client(paho)
    if user is not None:
        paho.username_pw_set(user, password)

    def on_connect(c: mqtt.Client, u: object, flags: object, rc: ReasonCode, p: object) -> None:
        client.connack = rc
        client.connected.set()

    def on_message(c: mqtt.Client, u: object, message: mqtt.MQTTMessage) -> None:
        with client.lock:
            client.received.append((message.topic, bytes(message.payload)))

    def on_subscribe(
        c: mqtt.Client, u: object, mid: int, codes: list[ReasonCode], p: object
    ) -> None:
        with client.lock:
            client.granted.extend(code.value for code in codes)

    def on_publish(c: mqtt.Client, u: object, mid: int, rc: ReasonCode, p: object) -> None:
        with client.lock:
            client.published.add(mid)

    paho.on_connect = on_connect
    paho.on_message = on_message
    paho.on_subscribe = on_subscribe
    paho.on_publish = on_publish
    paho.connect("127.0.0.1", port)
    paho.loop_start()
    assert client.connected.wait(10), "no CONNACK"
    return client


def close(*clients: Client) -> None:
    for client in clients:
        client.paho.disconnect()
        client.paho.loop_stop()


def publish_once(port: int, user: str, password: str, topic: str, payload: bytes) -> None:
    """Connect as ``user``, publish QoS 1, wait until the broker has handled it, disconnect.

    The broker answers a refused publish too (and 2.0.11 then drops a 3.1.1 connection), so
    "handled" is the PUBACK or the end of the connection."""
    client = connect(port, user, password)
    assert client.connack is not None and not client.connack.is_failure, client.connack
    lost = threading.Event()
    client.paho.on_disconnect = lambda *args: lost.set()
    info = client.paho.publish(topic, payload, qos=1)
    wait_until(
        lambda: info.mid in client.published or lost.is_set(),
        10,
        f"the broker handling {user}'s publish to {topic}",
    )
    close(client)


def gateway_subscriber(port: int, topic_filter: str, v5: bool = False) -> Client:
    gateway = connect(port, GATEWAY_USER, PASSWORDS[GATEWAY_USER], v5=v5)
    gateway.paho.subscribe(topic_filter, qos=1)
    wait_until(lambda: len(gateway.granted) == 1, 10, "SUBACK")
    assert gateway.granted == [1], gateway.granted
    return gateway


def test_agent_publishes_only_under_its_own_topic(broker: Broker) -> None:
    gateway = gateway_subscriber(broker.port, "karkhana/v1/edge/+/samples")
    try:
        # edge-a writing as edge-b: refused. Then edge-a on its own topic: delivered. One
        # client's messages are routed in order, so once the second has arrived the first
        # would have arrived before it had it been let through.
        publish_once(
            broker.port, "edge-a", PASSWORDS["edge-a"], "karkhana/v1/edge/edge-b/samples", b"forged"
        )
        publish_once(
            broker.port, "edge-a", PASSWORDS["edge-a"], "karkhana/v1/edge/edge-a/samples", b"own"
        )
        wait_until(lambda: b"own" in gateway.payloads(), 10, "edge-a's own sample")
        assert gateway.topics() == ["karkhana/v1/edge/edge-a/samples"]
        assert b"forged" not in gateway.payloads()

        # And the other way round: edge-b may write its own topic but not edge-a's.
        publish_once(
            broker.port, "edge-b", EDGE_B_PASSWORD, "karkhana/v1/edge/edge-a/samples", b"x"
        )
        publish_once(
            broker.port, "edge-b", EDGE_B_PASSWORD, "karkhana/v1/edge/edge-b/samples", b"b"
        )
        wait_until(lambda: b"b" in gateway.payloads(), 10, "edge-b's own sample")
        assert gateway.payloads() == [b"own", b"b"]
    finally:
        close(gateway)


def test_agent_status_is_limited_to_its_own_topic(broker: Broker) -> None:
    gateway = gateway_subscriber(broker.port, "karkhana/v1/edge/+/status")
    try:
        publish_once(
            broker.port, "edge-a", PASSWORDS["edge-a"], "karkhana/v1/edge/edge-b/status", b"forged"
        )
        publish_once(
            broker.port, "edge-a", PASSWORDS["edge-a"], "karkhana/v1/edge/edge-a/status", b"online"
        )
        wait_until(lambda: b"online" in gateway.payloads(), 10, "edge-a's status")
        assert gateway.payloads() == [b"online"]
    finally:
        close(gateway)


def test_gateway_reads_samples_with_a_shared_subscription(broker: Broker) -> None:
    gateway = gateway_subscriber(broker.port, "$share/ingest/karkhana/v1/edge/+/samples", v5=True)
    try:
        publish_once(
            broker.port, "edge-a", PASSWORDS["edge-a"], "karkhana/v1/edge/edge-a/samples", b"s1"
        )
        wait_until(
            lambda: gateway.payloads() == [b"s1"], 10, "the sample on the shared subscription"
        )
    finally:
        close(gateway)


def test_agent_reads_nothing_of_other_agents(broker: Broker) -> None:
    spy = connect(broker.port, "edge-b", EDGE_B_PASSWORD)
    spy.paho.subscribe("karkhana/v1/edge/#", qos=1)
    wait_until(lambda: len(spy.granted) == 1, 10, "SUBACK")
    gateway = gateway_subscriber(broker.port, "karkhana/v1/edge/+/samples")
    try:
        publish_once(
            broker.port, "edge-a", PASSWORDS["edge-a"], "karkhana/v1/edge/edge-a/samples", b"a1"
        )
        # The gateway's copy and the spy's would be routed in the same step.
        wait_until(lambda: b"a1" in gateway.payloads(), 10, "the gateway's copy")
        assert spy.received == []
    finally:
        close(spy, gateway)


@pytest.mark.parametrize(
    ("user", "password"),
    [
        (None, None),
        ("edge-a", "wrong-password-123"),
        ("nobody", "whatever-password-1"),
        ("edge-a", EXTRA_EDGE_A_PASSWORD),
    ],
    ids=["anonymous", "wrong-password", "unknown-user", "env-user-overridden-in-extra"],
)
def test_broker_refuses_clients_without_valid_credentials(
    broker: Broker, user: str | None, password: str | None
) -> None:
    client = connect(broker.port, user, password)
    try:
        assert client.connack is not None and client.connack.is_failure
        assert "authori" in str(client.connack).lower()
    finally:
        close(client)


def test_edge_agent_started_by_the_compose_entry_delivers_through_the_acl(
    broker: Broker, tmp_path: Path
) -> None:
    """deploy/edge/run_edge.py completes an edge.yaml without credentials and starts the
    real agent; its status and samples pass the ACL and reach the gateway's user."""
    with run_mosquitto(tmp_path / "sensor-bus") as sensors:
        source = tmp_path / "edge.yaml"
        source.write_text(
            "agent_id: edge-a\n"
            "uplink:\n  broker: mqtt://127.0.0.1:1\n  username: null\n  password: null\n"
            f"buffer:\n  path: {tmp_path / 'buffer.sqlite'}\n  flush_interval_s: 0.05\n"
            "sources:\n"
            "  - type: mqtt\n    name: sensors\n    broker: null\n    topics:\n"
            "      - topic: 'sensors/{machine}/{signal}'\n"
            "        asset: 'lahore/dyeing/line-1/{machine}'\n"
            "        signal: '{signal}'\n"
            "        format: number\n"
        )
        gateway = gateway_subscriber(broker.port, "karkhana/v1/edge/#")
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("MQTT_", "KARKHANA_"))},
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "EDGE_CONFIG_SOURCE": str(source),
            "EDGE_CONFIG_TARGET": str(tmp_path / "run" / "edge.yaml"),
            "EDGE_UPLINK_BROKER": f"mqtt://127.0.0.1:{broker.port}",
            "EDGE_SENSOR_BROKER": sensors.url,
            "KARKHANA_EDGE_AGENT_ID": "edge-a",
            "MQTT_EDGE_PASSWORD": PASSWORDS["edge-a"],
        }
        log = (tmp_path / "edge.log").open("wb")
        agent = subprocess.Popen(
            [sys.executable, str(ROOT / "deploy" / "edge" / "run_edge.py")],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:

            def ready() -> bool:
                return any(
                    t == "karkhana/v1/edge/edge-a/status" and json.loads(p).get("ready") is True
                    for t, p in list(gateway.received)
                )

            wait_until(ready, 30, "edge-a's status 'ready' at the gateway")
            sensor = connect(sensors.port, None, None)
            sensor.paho.publish("sensors/dryer-01/temperature", b"71.5", qos=1).wait_for_publish(10)
            close(sensor)

            def envelope() -> dict[str, object] | None:
                for topic, payload in list(gateway.received):
                    if topic == "karkhana/v1/edge/edge-a/samples":
                        return dict(json.loads(payload))
                return None

            wait_until(lambda: envelope() is not None, 30, "edge-a's envelope at the gateway")
            sent = envelope()
            assert sent is not None and sent["agent"] == "edge-a"
            samples = sent["samples"]
            assert isinstance(samples, list)
            assert [(s["asset"], s["signal"], s["value"]) for s in samples] == [
                ("lahore/dyeing/line-1/dryer-01", "temperature", 71.5)
            ]
            rendered = (tmp_path / "run" / "edge.yaml").stat().st_mode & 0o777
            assert rendered == 0o600  # the file holding the password is private
        finally:
            agent.terminate()
            try:
                agent.wait(timeout=15)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait(timeout=5)
            log.close()
            close(gateway)
