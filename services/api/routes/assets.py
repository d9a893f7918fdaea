"""``GET /api/v1/assets``: the asset tree with each machine's latest state."""

from __future__ import annotations

from fastapi import APIRouter

from karkhana.config.factory import MachineRef
from karkhana.models import from_ns, iso_utc
from services.api.deps import FactoryDep, ReaderDep, StoreReader
from services.api.schemas import AreaNode, AssetTree, LineNode, MachineNode, SiteNode
from services.kpi import current_state

router = APIRouter(tags=["assets"])

_LATEST = 2**63 - 1


def _machine_node(ref: MachineRef, reader: StoreReader) -> MachineNode:
    now = current_state(
        reader.points_before(ref.path, ref.machine.signals.state, _LATEST), ref.state_map
    )
    return MachineNode(
        id=ref.machine.id,
        name=ref.machine.name,
        path=ref.path,
        ideal_cycle_s=ref.machine.ideal_cycle_s,
        short_stop_threshold_s=ref.short_stop_threshold_s,
        state=now.state if now else None,
        state_since=iso_utc(from_ns(now.since_ns)) if now else None,
    )


@router.get("/assets", response_model=AssetTree)
def asset_tree(factory: FactoryDep, reader: ReaderDep) -> AssetTree:
    refs = {ref.path: ref for ref in factory.machines()}
    sites: list[SiteNode] = []
    for site in factory.sites:
        areas: list[AreaNode] = []
        for area in site.areas:
            lines: list[LineNode] = []
            for line in area.lines:
                line_path = f"{site.id}/{area.id}/{line.id}"
                machines = [
                    _machine_node(refs[f"{line_path}/{m.id}"], reader) for m in line.machines
                ]
                lines.append(
                    LineNode(id=line.id, name=line.name, path=line_path, machines=machines)
                )
            areas.append(
                AreaNode(id=area.id, name=area.name, path=f"{site.id}/{area.id}", lines=lines)
            )
        sites.append(
            SiteNode(id=site.id, name=site.name, path=site.id, timezone=site.timezone, areas=areas)
        )
    return AssetTree(sites=sites)
