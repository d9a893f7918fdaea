"""The gateway's health series: agent status parsing and the ``platform`` line."""

from __future__ import annotations

from gateway.metrics import InboxGauges
from gateway.platform_stats import AgentStatus, agent_line, parse_status, platform_line
from gateway.stats import GatewayStats

TOPIC = "karkhana/v1/edge/lahore-edge-1/status"


def test_status_of_an_online_agent_counts_its_connected_sources() -> None:
    payload = (
        b'{"state": "online", "agent": "lahore-edge-1", "ts": "2024-05-01T06:00:00Z", '
        b'"ready": false, "sources": {"loom-01": "connected", "sensors": "disconnected"}}'
    )
    assert parse_status(TOPIC, payload) == AgentStatus("lahore-edge-1", True, False, 2, 1)


def test_an_offline_agent_has_no_connected_source() -> None:
    status = parse_status(TOPIC, b'{"state": "offline", "agent": "lahore-edge-1"}')
    assert status == AgentStatus("lahore-edge-1", False, False, 0, 0)


def test_unreadable_statuses_say_why() -> None:
    assert "not JSON" in str(parse_status(TOPIC, b"{oops"))
    assert "online/offline" in str(parse_status(TOPIC, b'{"state": "sleeping"}'))
    assert "not an agent status topic" in str(parse_status("karkhana/v1/x", b"{}"))


def test_platform_line_has_totals_rates_and_depth() -> None:
    before = GatewayStats(messages=10, samples_written=100, dead_letters=1)
    now = GatewayStats(messages=30, samples_written=600, dead_letters=3, commit_lag_s=0.25)
    now.write_seconds.observe(0.5)
    now.write_seconds.observe(1.5)
    agents = {"a": AgentStatus("a", True, True, 1, 1), "b": AgentStatus("b", False, False, 0, 0)}
    line = platform_line("gw 1", now, before, 10.0, InboxGauges(lambda: 4, lambda: 40), agents, 7)
    head, fields, ts = line.rsplit(" ", 2)
    assert (head, ts) == ("platform,gateway=gw\\ 1", "7")
    values = dict(f.split("=", 1) for f in fields.split(","))
    assert values["samples_written"] == "600i" and values["dead_letters"] == "3i"
    assert float(values["samples_per_s"]) == 50.0
    assert float(values["messages_per_s"]) == 2.0
    assert values["dead_letters_new"] == "2i"
    assert float(values["write_s_mean"]) == 1.0
    assert (values["inbox_messages"], values["inbox_bytes"]) == ("4i", "40i")
    assert (values["agents_online"], values["agents_known"]) == ("1i", "2i")


def test_agent_line() -> None:
    line = agent_line(AgentStatus("edge 1", True, False, 3, 2), 5)
    assert line == "edge_agent,agent=edge\\ 1 online=1i,ready=0i,sources=3i,sources_connected=2i 5"


def test_the_buffer_depth_of_an_agent_reaches_its_point() -> None:
    payload = (
        b'{"state": "online", "agent": "lahore-edge-1", "ready": true, '
        b'"sources": {"loom-01": "connected"}, "samples_pending": 1250, "buffer_bytes": 90000}'
    )
    status = parse_status(TOPIC, payload)
    assert status == AgentStatus("lahore-edge-1", True, True, 1, 1, 1250, 90000)
    assert isinstance(status, AgentStatus)
    assert agent_line(status, 5) == (
        "edge_agent,agent=lahore-edge-1 online=1i,ready=1i,sources=1i,sources_connected=1i,"
        "samples_pending=1250i,buffer_bytes=90000i 5"
    )


def test_a_depth_that_is_not_a_count_is_left_out() -> None:
    for bad in (b'"many"', b"-3", b"true", b"1.5"):
        payload = b'{"state": "online", "samples_pending": ' + bad + b', "buffer_bytes": null}'
        status = parse_status(TOPIC, payload)
        assert isinstance(status, AgentStatus)
        assert (status.samples_pending, status.buffer_bytes) == (None, None)
        assert "samples_pending" not in agent_line(status, 5)
