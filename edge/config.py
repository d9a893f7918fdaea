"""The ``edge.yaml`` model: which PLCs and sensors an edge agent reads and where it forwards.

Every model forbids unknown keys so a typo is refused instead of silently ignored. Topic
patterns of MQTT sources are checked here, once, and compiled by ``edge.mapping``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edge.modbus_config import ModbusSourceConfig
from edge.transform import MappingKeys
from karkhana.config.loading import load_model
from karkhana.models import ASSET_PATH_RE, SEGMENT_RE, SIGNAL_RE
from karkhana.mqtt_url import parse_broker_url

AGENT_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
MULTI_PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\+\}")
_ANY_PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\+?\}")
_ASSET_PREFIX_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*(?:/[a-z0-9][a-z0-9_-]*){0,3}$")
_ANY_BRACE_RE = re.compile(r"[{}]")
SPARKPLUG_PLACEHOLDERS = ("group", "edge_node", "device", "metric")

AgentId = Annotated[str, Field(pattern=AGENT_ID_RE.pattern, max_length=64)]
SourceName = Annotated[str, Field(pattern=SEGMENT_RE.pattern, max_length=64)]
AssetPathStr = Annotated[str, Field(pattern=ASSET_PATH_RE.pattern)]
SignalName = Annotated[str, Field(pattern=SIGNAL_RE.pattern)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_broker_url(url: str) -> str:
    parse_broker_url(url)
    return url


def broker_host_port(url: str) -> tuple[str, int]:
    """``mqtt://host:port`` -> (host, port); the port defaults to 1883."""
    parsed = parse_broker_url(url)
    return parsed.host, parsed.port


class UplinkConfig(_Strict):
    """The MQTT broker the agent forwards samples, dead letters and its status to."""

    broker: str
    client_id: str | None = None
    username: str | None = None
    password: str | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    status_interval_s: float = Field(default=10.0, ge=0.5, le=3600)
    """The retained status is republished this often (besides on every change), so that
    its buffer depth stays current."""

    _url = field_validator("broker")(_check_broker_url)


class BufferConfig(_Strict):
    """The on-disk store-and-forward buffer (SQLite)."""

    path: Path | None = None  # default ./karkhana-data/edge/{agent_id}.sqlite
    max_batch_samples: int = Field(default=500, ge=1, le=100_000)
    flush_interval_s: float = Field(default=0.2, gt=0, le=60)
    # Bounds on unsent data; past them the oldest unsent data is dropped (and counted).
    max_bytes: int = Field(default=1024**3, ge=64 * 1024)  # stored payload bytes
    max_age_s: float = Field(default=7 * 24 * 3600.0, gt=0)


class MetricsConfig(_Strict):
    """Optional Prometheus ``/metrics`` endpoint of the agent."""

    port: int = Field(ge=0, le=65535)  # 0 = any free port (tests)
    host: str = "127.0.0.1"


class OpcUaNode(MappingKeys):
    """One variable: by ``node_id`` or by ``browse_path`` (resolved on every connect).

    The value mapping keys (``scale``, ``offset``, ``deadband``, ``deadband_percent``,
    ``range``, ``state_map``) come from :class:`edge.transform.MappingKeys`."""

    node_id: str | None = Field(default=None, min_length=1)
    browse_path: list[str] | None = None
    asset: AssetPathStr
    signal: SignalName
    unit: str | None = None

    @field_validator("node_id")
    @classmethod
    def _node_id_parses(cls, value: str | None) -> str | None:
        from asyncua import ua

        if value is None:
            return None
        try:
            ua.NodeId.from_string(value)
        except (ValueError, ua.UaStringParsingError) as exc:
            raise ValueError(f"not an OPC UA node id (e.g. 'ns=2;s=loom-01.Speed'): {exc}") from exc
        return value

    @field_validator("browse_path", mode="before")
    @classmethod
    def _split_browse_path(cls, value: Any) -> Any:
        from edge.sources.opcua_security import parse_browse_path

        if value is None:
            return None
        return parse_browse_path(value)

    @model_validator(mode="after")
    def _one_reference(self) -> OpcUaNode:
        if (self.node_id is None) == (self.browse_path is None):
            raise ValueError("give exactly one of node_id or browse_path")
        return self

    @property
    def ref(self) -> str:
        """``node_id``, or the browse path joined with ``/``."""
        return self.node_id if self.node_id is not None else "/".join(self.browse_path or [])


class OpcUaSecurity(_Strict):
    """Secure channel settings; ``policy: None`` (the default) means no security."""

    policy: Literal["None", "Basic256Sha256", "Aes128_Sha256_RsaOaep"] = "None"
    mode: Literal["None", "Sign", "SignAndEncrypt"] = "None"
    certificate: Path | None = None
    private_key: Path | None = None
    trust_dir: Path | None = None
    trust_on_first_use: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> OpcUaSecurity:
        if (self.policy == "None") != (self.mode == "None"):
            raise ValueError("policy and mode must both be None or both be set")
        if self.policy == "None":
            return self
        for key in ("certificate", "private_key", "trust_dir"):
            if getattr(self, key) is None:
                raise ValueError(f"{key} is required with policy {self.policy}")
        for key in ("certificate", "private_key"):
            path: Path = getattr(self, key)
            if not path.is_file():
                raise ValueError(f"{key}: no such file {str(path)!r}")
        assert self.trust_dir is not None
        if not self.trust_on_first_use and not self.trust_dir.is_dir():
            raise ValueError(f"trust_dir: no such directory {str(self.trust_dir)!r}")
        return self


class OpcUaAuth(_Strict):
    """User identity: ``username`` with ``password`` or ``password_file``, or a user
    ``certificate`` with its ``private_key``."""

    username: str | None = Field(default=None, min_length=1)
    password: str | None = None
    password_file: Path | None = None
    certificate: Path | None = None
    private_key: Path | None = None

    @model_validator(mode="after")
    def _one_identity(self) -> OpcUaAuth:
        if self.username is not None:
            if self.certificate is not None or self.private_key is not None:
                raise ValueError("give username/password or certificate/private_key, not both")
            if (self.password is None) == (self.password_file is None):
                raise ValueError("with username give exactly one of password or password_file")
            if self.password_file is not None and not self.password_file.is_file():
                raise ValueError(f"password_file: no such file {str(self.password_file)!r}")
            return self
        if self.password is not None or self.password_file is not None:
            raise ValueError("password given without username")
        if self.certificate is None or self.private_key is None:
            raise ValueError("give username and password, or certificate and private_key")
        for key in ("certificate", "private_key"):
            path: Path = getattr(self, key)
            if not path.is_file():
                raise ValueError(f"{key}: no such file {str(path)!r}")
        return self

    def resolved_password(self) -> str | None:
        """The password, read from ``password_file`` (trailing newline removed) if given."""
        if self.password_file is not None:
            return self.password_file.read_text(encoding="utf-8").rstrip("\r\n")
        return self.password


class OpcUaSourceConfig(_Strict):
    """One OPC UA server (a PLC) read through one subscription (or by polling)."""

    type: Literal["opcua"]
    name: SourceName
    endpoint: str = Field(pattern=r"^opc\.tcp://[^/\s]+")
    mode: Literal["subscription", "poll"] = "subscription"
    publishing_interval_ms: float = Field(default=100, gt=0, le=3_600_000)
    poll_interval_ms: float = Field(default=1000, ge=10, le=3_600_000)
    keepalive_ms: float = Field(default=5000, ge=200, le=600_000)
    session_timeout_ms: float = Field(default=60_000, ge=1000, le=3_600_000)
    # Nodes are spread over several subscriptions of at most this many monitored items.
    max_items_per_subscription: int = Field(default=2000, ge=1, le=100_000)
    security: OpcUaSecurity = Field(default_factory=lambda: OpcUaSecurity())
    auth: OpcUaAuth | None = None
    nodes: list[OpcUaNode] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_nodes(self) -> OpcUaSourceConfig:
        seen: set[str] = set()
        for node in self.nodes:
            if node.ref in seen:
                raise ValueError(f"node {node.ref!r} is listed twice")
            seen.add(node.ref)
        return self


def split_topic_pattern(pattern: str) -> list[str]:
    """Check an MQTT topic pattern and return its levels.

    A level is a literal, ``+`` (any one level), ``{name}`` (one level, captured as
    ``name``) or, as the last level only, ``#`` or ``{name+}`` (one or more levels,
    captured with their ``/`` as ``name``).
    """
    if not pattern:
        raise ValueError("topic pattern is empty")
    levels = pattern.split("/")
    names: set[str] = set()
    for index, level in enumerate(levels):
        if level == "":
            raise ValueError(f"topic pattern {pattern!r} has an empty level")
        if level == "#":
            if index != len(levels) - 1:
                raise ValueError(f"'#' may only be the last level of a topic ({pattern!r})")
            continue
        if level == "+":
            continue
        whole = PLACEHOLDER_RE.fullmatch(level) or MULTI_PLACEHOLDER_RE.fullmatch(level)
        if whole and whole.re is MULTI_PLACEHOLDER_RE and index != len(levels) - 1:
            raise ValueError(f"{level!r} may only be the last level of a topic ({pattern!r})")
        if whole:
            name = whole.group(1)
            if name in names:
                raise ValueError(f"placeholder {{{name}}} appears twice in {pattern!r}")
            names.add(name)
            continue
        if _ANY_BRACE_RE.search(level):
            raise ValueError(
                f"level {level!r} of {pattern!r}: a placeholder must fill a whole level, "
                "e.g. 'sensors/{machine}/temp'"
            )
        if "+" in level or "#" in level:
            raise ValueError(f"level {level!r} of {pattern!r}: '+' and '#' must fill a whole level")
    return levels


def topic_placeholders(pattern: str) -> list[str]:
    """Names of the ``{name}`` and ``{name+}`` placeholders of a topic or template."""
    return [m.group(1) for m in _ANY_PLACEHOLDER_RE.finditer(pattern)]


def multi_level_placeholders(pattern: str) -> set[str]:
    """Names of the ``{name+}`` placeholders of a topic pattern."""
    return {m.group(1) for m in MULTI_PLACEHOLDER_RE.finditer(pattern)}


def _fill(template: str, value: str) -> str:
    return PLACEHOLDER_RE.sub(value, template)


class MqttTopic(MappingKeys):
    """One topic pattern of an MQTT source and how to turn its messages into samples
    (plus the value mapping keys of :class:`edge.transform.MappingKeys`)."""

    topic: str
    format: Literal["json", "number", "string", "sparkplug_b"] = "json"
    asset: str
    signal: str
    value_path: str | None = "value"  # json only; null = the whole document is the value
    ts_path: str | None = "ts"  # json only; null or missing in the payload -> receive time
    quality_path: str | None = None  # json only
    unit: str | None = None
    # sparkplug_b only: explicit metric name -> signal, the rule for the other metrics
    metrics: dict[str, SignalName] | None = None
    metric_rule: Literal["underscore", "dot", "exact"] = "underscore"
    unmapped_metrics: Literal["rule", "ignore"] = "rule"

    @field_validator("topic")
    @classmethod
    def _topic_ok(cls, value: str) -> str:
        split_topic_pattern(value)
        return value

    @field_validator("format")
    @classmethod
    def _format_fits_topic(cls, value: str, info: ValidationInfo) -> str:
        topic = info.data.get("topic")
        if value == "sparkplug_b" and topic is not None and topic.split("/")[0] != "spBv1.0":
            raise ValueError(
                f"sparkplug_b needs a topic starting with 'spBv1.0/' (got {topic!r}), "
                "e.g. 'spBv1.0/{group}/#'"
            )
        return value

    @field_validator("metrics", "metric_rule", "unmapped_metrics")
    @classmethod
    def _sparkplug_only(cls, value: Any, info: ValidationInfo) -> Any:
        if info.data.get("format", "json") != "sparkplug_b":
            raise ValueError("only used with format: sparkplug_b")
        return value

    @field_validator("asset", "signal")
    @classmethod
    def _template_ok(cls, template: str, info: ValidationInfo) -> str:
        if _ANY_BRACE_RE.search(PLACEHOLDER_RE.sub("", template)):
            raise ValueError(f"stray '{{' or '}}' in template {template!r}")
        topic = info.data.get("topic")
        if info.data.get("format") == "sparkplug_b":
            for name in topic_placeholders(template):
                if name not in SPARKPLUG_PLACEHOLDERS:
                    known = ", ".join(f"{{{n}}}" for n in SPARKPLUG_PLACEHOLDERS)
                    raise ValueError(f"placeholder {{{name}}} is not one of {known}")
        elif topic is not None:
            available = set(topic_placeholders(topic))
            for name in topic_placeholders(template):
                if name not in available:
                    raise ValueError(f"placeholder {{{name}}} does not appear in topic {topic!r}")
        filled = _fill(template, "x")
        multi = multi_level_placeholders(topic or "") & set(topic_placeholders(template))
        if info.field_name == "asset" and multi:
            # a {name+} capture fills one or more segments: checked per message
            if not _ASSET_PREFIX_RE.fullmatch(filled):
                raise ValueError(
                    f"{template!r} cannot become 'site/area/line/machine' (at most four "
                    "segments of lower-case letters, digits, '-' and '_')"
                )
        elif info.field_name == "asset" and not ASSET_PATH_RE.fullmatch(filled):
            raise ValueError(
                f"{template!r} is not 'site/area/line/machine' once filled (lower-case "
                "letters, digits, '-' and '_'; a placeholder fills one segment)"
            )
        if info.field_name == "signal" and not SIGNAL_RE.fullmatch(filled):
            raise ValueError(
                f"{template!r} is not a valid signal name once filled "
                "(lower-case letter first, then letters, digits, '_', '.', '-')"
            )
        return template

    @field_validator("value_path", "ts_path", "quality_path")
    @classmethod
    def _path_ok(cls, path: str | None, info: ValidationInfo) -> str | None:
        if path is None:
            return None
        if info.data.get("format", "json") != "json":
            raise ValueError("only used with format: json")
        if any(part == "" for part in path.split(".")):
            raise ValueError(f"{path!r} is not a dotted path such as 'data.value'")
        return path

    @model_validator(mode="after")
    def _no_mapping_for_sparkplug(self) -> MqttTopic:
        if self.format == "sparkplug_b" and self.has_mapping:
            raise ValueError("value mapping keys are not supported with format: sparkplug_b")
        return self


class MqttSourceConfig(_Strict):
    """Sensors publishing on an MQTT broker (by default the uplink broker)."""

    type: Literal["mqtt"]
    name: SourceName
    broker: str | None = None  # null = the uplink broker (and its credentials)
    topics: list[MqttTopic] = Field(min_length=1)

    @field_validator("broker")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else _check_broker_url(value)


SourceConfig = OpcUaSourceConfig | MqttSourceConfig | ModbusSourceConfig
_SOURCE_TYPES: dict[
    str, type[OpcUaSourceConfig] | type[MqttSourceConfig] | type[ModbusSourceConfig]
] = {
    "opcua": OpcUaSourceConfig,
    "mqtt": MqttSourceConfig,
    "modbus": ModbusSourceConfig,
}


def _validate_source(data: Any) -> SourceConfig:
    """Pick the model by ``type`` so error paths read ``sources[0].endpoint``."""
    if isinstance(data, OpcUaSourceConfig | MqttSourceConfig | ModbusSourceConfig):
        return data
    if not isinstance(data, dict):
        raise ValueError("a source must be a mapping with a 'type' key")
    kind = data.get("type")
    model = _SOURCE_TYPES.get(kind) if isinstance(kind, str) else None
    if model is None:
        known = ", ".join(_SOURCE_TYPES)
        raise ValueError(f"source type must be one of {known} (got {kind!r})")
    return model.model_validate(data)


class EdgeConfig(_Strict):
    """The whole ``edge.yaml``."""

    agent_id: AgentId
    uplink: UplinkConfig
    buffer: BufferConfig = Field(default_factory=lambda: BufferConfig())
    metrics: MetricsConfig | None = None
    sources: list[Annotated[SourceConfig, PlainValidator(_validate_source)]] = Field(
        default_factory=list
    )

    @model_validator(mode="after")
    def _cross_checks(self) -> EdgeConfig:
        names: set[str] = set()
        mapped: dict[tuple[str, str], str] = {}
        for source in self.sources:
            if source.name in names:
                raise ValueError(f"source name {source.name!r} is used twice")
            names.add(source.name)
            if isinstance(source, OpcUaSourceConfig):
                for node in source.nodes:
                    key = (node.asset, node.signal)
                    if key in mapped:
                        raise ValueError(
                            f"{node.asset} {node.signal} is mapped twice "
                            f"({mapped[key]} and {source.name} {node.ref})"
                        )
                    mapped[key] = f"{source.name} {node.ref}"
            if isinstance(source, ModbusSourceConfig):
                for reg in source.registers:
                    key = (reg.asset, reg.signal)
                    where = f"{source.name} {reg.table} {reg.address}"
                    if key in mapped:
                        raise ValueError(
                            f"{reg.asset} {reg.signal} is mapped twice ({mapped[key]} and {where})"
                        )
                    mapped[key] = where
        return self

    @property
    def client_id(self) -> str:
        return self.uplink.client_id or f"karkhana-edge-{self.agent_id}"

    @property
    def buffer_path(self) -> Path:
        """The buffer file; a relative path is relative to the current directory."""
        path = self.buffer.path or Path("karkhana-data") / "edge" / f"{self.agent_id}.sqlite"
        return path if path.is_absolute() else Path.cwd() / path


def load_edge_config(path: str | Path) -> EdgeConfig:
    """Read and validate an ``edge.yaml``; any problem raises one ``ConfigError``."""
    return load_model(EdgeConfig, path)


__all__ = [
    "BufferConfig",
    "EdgeConfig",
    "MetricsConfig",
    "ModbusSourceConfig",
    "MqttSourceConfig",
    "MqttTopic",
    "OpcUaAuth",
    "OpcUaNode",
    "OpcUaSecurity",
    "OpcUaSourceConfig",
    "SourceConfig",
    "UplinkConfig",
    "broker_host_port",
    "load_edge_config",
    "split_topic_pattern",
    "topic_placeholders",
]
