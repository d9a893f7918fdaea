"""``karkhana edge browse``: walk an OPC UA server's address space, show it, turn it into config.

The walk starts at the Objects folder and follows hierarchical references down to
``depth`` levels. The standard objects of namespace 0 directly below Objects (``Server``,
``Aliases``, ``Locations``) are skipped: they describe the server itself, not the machine.
Variables are read once for their value and data type.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.tree import Tree

from edge.sources.opcua_security import (
    ClientOptions,
    SecurityRejected,
    build_client,
    connect_client,
)
from karkhana.errors import ConfigError, ConnectionFailed

if TYPE_CHECKING:
    from asyncua import Client, Node

    from edge.config import OpcUaAuth, OpcUaSecurity

log = logging.getLogger(__name__)


@dataclass
class BrowsedNode:
    """One node of the walked address space."""

    browse_name: str  # "ns:Name"
    node_id: str
    node_class: str  # Object, Variable, ...
    data_type: str | None = None  # variables only
    value: Any = None  # variables only
    children: list[BrowsedNode] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.browse_name.split(":", 1)[1]

    def variables(self) -> list[tuple[list[BrowsedNode], BrowsedNode]]:
        """Every variable below this node, with the nodes on the way to it."""
        found: list[tuple[list[BrowsedNode], BrowsedNode]] = []
        for child in self.children:
            if child.node_class == "Variable":
                found.append(([self], child))
            for path, variable in child.variables():
                found.append(([self, *path], variable))
        return found


async def _describe(client: Client, node: Node) -> BrowsedNode:
    from asyncua import ua

    qname = await node.read_browse_name()
    node_class = await node.read_node_class()
    browsed = BrowsedNode(
        browse_name=f"{qname.NamespaceIndex}:{qname.Name}",
        node_id=node.nodeid.to_string(),
        node_class=node_class.name,
    )
    if node_class == ua.NodeClass.Variable:
        try:
            dv = await node.read_data_value()
        except ua.UaStatusCodeError as exc:
            browsed.value = f"<{exc}>"
        else:
            variant = dv.Value
            browsed.value = variant.Value if variant is not None else None
            browsed.data_type = variant.VariantType.name if variant is not None else None
        if browsed.data_type is None:
            type_node = client.get_node(await node.read_data_type())
            browsed.data_type = (await type_node.read_browse_name()).Name
    return browsed


async def walk(client: Client, *, depth: int, text_filter: str | None = None) -> BrowsedNode:
    """The tree below Objects, ``depth`` levels deep. With ``text_filter`` only the
    variables whose browse name or node id contains it (any case) and their parents."""
    needle = text_filter.lower() if text_filter else None

    async def visit(node: Node, level: int) -> BrowsedNode | None:
        browsed = await _describe(client, node)
        if level < depth:
            for child in await node.get_children():
                if level == 0 and child.nodeid.NamespaceIndex == 0:
                    continue
                sub = await visit(child, level + 1)
                if sub is not None:
                    browsed.children.append(sub)
        if needle is None or level == 0 or browsed.children:
            return browsed
        if browsed.node_class == "Variable" and (
            needle in browsed.browse_name.lower() or needle in browsed.node_id.lower()
        ):
            return browsed
        return None

    root = await visit(client.nodes.objects, 0)
    assert root is not None  # level 0 is always kept
    return root


async def browse_server(
    endpoint: str,
    security: OpcUaSecurity,
    auth: OpcUaAuth | None,
    *,
    depth: int,
    text_filter: str | None = None,
) -> BrowsedNode:
    """Connect with the given security and identity and walk the address space."""
    from asyncua import ua

    try:
        options = ClientOptions(endpoint=endpoint, security=security, auth=auth)
        client = await build_client(options)
        await connect_client(client, options)
    except SecurityRejected:  # IdentityRejected included: both carry a clear message
        raise
    except (OSError, TimeoutError, ua.UaError) as exc:
        raise ConnectionFailed(f"cannot connect to {endpoint}: {exc!r}") from exc
    try:
        return await walk(client, depth=depth, text_filter=text_filter)
    except (OSError, TimeoutError, ua.UaError) as exc:
        raise ConnectionFailed(f"browsing {endpoint} failed: {exc!r}") from exc
    finally:
        try:
            await client.disconnect()
        except (OSError, ua.UaError) as exc:
            log.debug("browse: disconnect: %r", exc)


# --- output ---------------------------------------------------------------------------


def _label(node: BrowsedNode) -> str:
    from rich.markup import escape

    text = f"[bold]{escape(node.browse_name)}[/bold]  [dim]{escape(node.node_id)}[/dim]"
    if node.node_class == "Variable":
        text += f"  {escape(str(node.data_type))} = {escape(repr(node.value))}"
    elif node.node_class != "Object":
        text += f"  ({node.node_class})"
    return text


def render_tree(root: BrowsedNode, endpoint: str) -> Tree:
    tree = Tree(f"{endpoint}  {_label(root)}")

    def add(parent: Tree, node: BrowsedNode) -> None:
        branch = parent.add(_label(node))
        for child in node.children:
            add(branch, child)

    for child in root.children:
        add(tree, child)
    return tree


_CAMEL_RE = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def snake_case(name: str) -> str:
    """``StateCode`` -> ``state_code``, ``PV.Temp 1`` -> ``pv_temp_1``; a name that does not
    start with a letter gets ``s_`` in front (signal names start with a letter)."""
    text = _CAMEL_RE.sub("_", name)
    text = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()
    if not text or not text[0].isalpha():
        text = f"s_{text}" if text else "signal"
    return text


def source_entry(
    root: BrowsedNode,
    *,
    name: str,
    endpoint: str,
    asset: str,
    security: OpcUaSecurity,
    auth: OpcUaAuth | None,
) -> dict[str, Any]:
    """An ``edge.yaml`` ``sources:`` entry reading every variable of ``root`` by node id;
    signal names are the snake_case browse names (``_2``, ``_3`` ... when they repeat)."""
    nodes: list[dict[str, Any]] = []
    used: set[str] = set()
    for _, variable in root.variables():
        base = snake_case(variable.name)
        signal, n = base, 1
        while signal in used:
            n += 1
            signal = f"{base}_{n}"
        used.add(signal)
        nodes.append({"node_id": variable.node_id, "asset": asset, "signal": signal})
    entry: dict[str, Any] = {"type": "opcua", "name": name, "endpoint": endpoint}
    if security.policy != "None":
        entry["security"] = security.model_dump(mode="json", exclude_defaults=True)
    if auth is not None:
        entry["auth"] = auth.model_dump(mode="json", exclude_none=True)
    entry["nodes"] = nodes
    return entry


def write_config(path: Path, entry: dict[str, Any], *, agent_id: str, broker: str) -> None:
    """Add ``entry`` to the ``sources:`` of the edge.yaml at ``path`` (created with
    ``agent_id`` and ``broker`` if missing). The result is validated before it is written."""
    import yaml

    from edge.config import EdgeConfig
    from karkhana.config.loading import parse_model, read_yaml

    if path.exists():
        data = read_yaml(path)
        if not isinstance(data, dict):
            raise ConfigError(path, "", "the file must contain a mapping of keys at the top level")
        sources = data.setdefault("sources", [])
        if not isinstance(sources, list):
            raise ConfigError(path, "sources", "must be a list")
        if any(isinstance(s, dict) and s.get("name") == entry["name"] for s in sources):
            raise ConfigError(path, "sources", f"a source named {entry['name']!r} exists already")
        sources.append(entry)
    else:
        data = {"agent_id": agent_id, "uplink": {"broker": broker}, "sources": [entry]}
    parse_model(EdgeConfig, data, path)
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")


__all__ = [
    "BrowsedNode",
    "browse_server",
    "render_tree",
    "snake_case",
    "source_entry",
    "walk",
    "write_config",
]
