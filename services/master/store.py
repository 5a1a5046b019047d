"""Typed access to the cluster state in etcd.

The key layout is ``cube_common.keys`` (its docstring lists every record and its owner); every
value is proto3 JSON of one cube.v1 message, so ``etcdctl get --prefix /cube/`` explains the
cluster.

Writes that change a sandbox compare its mod revision (optimistic concurrency), so two masters
(or a master and the reconciler) never overwrite each other; a sandbox and its route change in
one transaction, and so does the team's admission guard when a quota applies (``TeamGuard``,
services/master/quotas.py). A deleted template leaves its tombstones, and loses its tags, in the
transaction that deletes it; tags are written comparing (and rewriting) their template's record
(services/master/tags.py). A claim of a tombstoned name compares the tombstone in the transaction
that claims it (``NameClaim``, services/master/tombstones.py). A volume and its per-team name index change
together; a sandbox's claims of its volumes (``Volume.mounted_by``) are written in the transaction
that creates its record, comparing each volume's revision, and cleared in the one that deletes it
(services/master/volumes.py).

Any etcd failure surfaces as ``EtcdUnavailable`` within the configured deadline, never as a hang
(``cube_common.etcd``, which also fails over between endpoints).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from aetcd.utils import prefix_range_end
from google.protobuf import json_format
from google.protobuf.message import Message

from cube_common.etcd import EtcdClient
from cube_common.keys import Keys
from cube_common.mtls import TlsFiles
from sdk.gen.cube.v1 import cubelet_pb2, master_pb2, route_pb2
from services.master.log import get_logger

log = get_logger("store")

M = TypeVar("M", bound=Message)
# How often a compare-and-swap is tried again after losing to another writer (every module's).
CAS_RETRIES = 8


class Conflict(Exception):
    """A compare-and-swap lost: the record changed (or appeared, or vanished) meanwhile."""


@dataclass(frozen=True)
class Versioned(Generic[M]):
    value: M
    mod_revision: int


@dataclass(frozen=True)
class TeamGuard:
    """An admission checked against a team's quota: its write holds only if the team record is
    still at ``mod_revision`` (no other admission of the team committed since it was counted) and
    rewrites the record unchanged, so that the next admission's count must include this one."""

    team: master_pb2.Team
    mod_revision: int


@dataclass(frozen=True)
class NameClaim:
    """A claim of a template name: the write holds only if the name's tombstone is still at
    ``mod_revision`` (0: it has none), i.e. nobody deleted a template of that name meanwhile."""

    name: str
    mod_revision: int


def to_json(msg: Message) -> bytes:
    return json_format.MessageToJson(msg, indent=None, sort_keys=True).encode()


def from_json(data: bytes, cls: type[M]) -> M:
    return json_format.Parse(data, cls(), ignore_unknown_fields=True)


class Store:
    def __init__(self, endpoints: Sequence[str], prefix: str = "/cube", timeout_s: float = 3.0,
                 tls: TlsFiles | None = None):
        self.etcd = EtcdClient(endpoints, timeout_s, tls=tls)
        self.keys = Keys(prefix)
        self.prefix = self.keys.root
        self.timeout_s = timeout_s

    # ---- plumbing -------------------------------------------------------------------------

    async def close(self) -> None:
        await self.etcd.close()

    def using(self):
        """The etcd channel held for a block (watches, the route-ack wait); see EtcdClient."""
        return self.etcd.using()

    async def call(self, make, op: str = "call"):
        """Run ``make(client)`` (a coroutine factory) with the deadline, failover and error mapping
        (timed and counted as the etcd operation ``op``)."""
        return await self.etcd.call(make, op=op)

    async def _get(self, key: bytes, cls: type[M]) -> Versioned[M] | None:
        r = await self.etcd.get(key)
        if r is None:
            return None
        return Versioned(from_json(r.value, cls), r.mod_revision)

    async def _list(self, pfx: bytes, cls: type[M]) -> list[Versioned[M]]:
        r = await self.etcd.get_prefix(pfx)
        out = []
        for kv in r.kvs:
            try:
                out.append(Versioned(from_json(kv.value, cls), kv.mod_revision))
            except json_format.ParseError:
                log.warning("unparsable value in etcd", extra={"key": kv.key.decode(errors="replace")})
        return out

    async def _put_new(self, key: bytes, msg: Message) -> bool:
        """Write a record only if its key is free; False when it exists."""
        t = self.t
        ok, _ = await self.txn([t.create(key) == 0], [t.put(key, to_json(msg))])
        return ok

    async def txn(self, compare, success, failure=()) -> tuple[bool, int]:
        """One transaction; returns (succeeded, revision of the write or 0)."""
        ok, responses = await self.call(lambda c: c.transaction(compare=list(compare), success=list(success),
                                                                failure=list(failure)), op="txn")
        rev = 0
        for r in responses:
            if hasattr(r, "response_put") and r.HasField("response_put"):
                rev = max(rev, r.response_put.header.revision)
            elif hasattr(r, "response_delete_range") and r.HasField("response_delete_range"):
                rev = max(rev, r.response_delete_range.header.revision)
        return ok, rev

    @property
    def t(self):
        return self.etcd.transactions

    async def current_revision(self) -> int:
        r = await self.etcd.get_prefix(self.keys.leader(), keys_only=True)
        return r.header.revision

    # ---- sandboxes and routes -------------------------------------------------------------

    def sandbox_key(self, sid: str) -> bytes:
        return self.keys.sandbox(sid)

    def route_key(self, sid: str) -> bytes:
        return self.keys.route(sid)

    async def get_sandbox(self, sid: str) -> Versioned[master_pb2.Sandbox] | None:
        return await self._get(self.sandbox_key(sid), master_pb2.Sandbox)

    async def list_sandboxes(self) -> list[Versioned[master_pb2.Sandbox]]:
        return await self._list(self.keys.sandboxes(), master_pb2.Sandbox)

    def _guarded(self, compare: list, ops: list, guard: TeamGuard | None) -> None:
        if guard is not None:
            k = self.keys.team(guard.team.team_id)
            compare.append(self.t.mod(k) == guard.mod_revision)
            ops.append(self.t.put(k, to_json(guard.team)))

    async def create_sandbox(self, rec: master_pb2.Sandbox, guard: TeamGuard | None = None,
                             claims: Sequence[Versioned[master_pb2.Volume]] = ()) -> int:
        """Write a new record (with its team's admission guard, when a quota applies), claiming
        the volumes it mounts (``claims``: each as read, written back naming the sandbox in
        ``mounted_by``). Conflict when the id exists, another admission of the team committed
        first, or a claimed volume changed since it was read."""
        t = self.t
        k = self.sandbox_key(rec.sandbox_id)
        compare, ops = [t.create(k) == 0], [t.put(k, to_json(rec))]
        self._guarded(compare, ops, guard)
        for v in claims:
            claimed = master_pb2.Volume()
            claimed.CopyFrom(v.value)
            claimed.mounted_by = rec.sandbox_id
            vk = self.keys.volume(claimed.volume_id)
            compare.append(t.mod(vk) == v.mod_revision)
            ops.append(t.put(vk, to_json(claimed)))
        ok, rev = await self.txn(compare, ops)
        if not ok:
            raise Conflict(f"sandbox {rec.sandbox_id} exists, or its team admitted another change")
        return rev

    async def update_sandbox(self, rec: master_pb2.Sandbox, expect_rev: int,
                             route: route_pb2.SandboxRoute | None = None, delete_route: bool = False,
                             guard: TeamGuard | None = None) -> int:
        """Replace the record if it is still at ``expect_rev``; optionally write or delete its
        route, and check and bump its team's admission guard, in the same transaction. Returns
        the new revision."""
        t = self.t
        k = self.sandbox_key(rec.sandbox_id)
        ops = [t.put(k, to_json(rec))]
        if route is not None:
            ops.append(t.put(self.route_key(rec.sandbox_id), to_json(route)))
        elif delete_route:
            ops.append(t.delete(self.route_key(rec.sandbox_id)))
        compare = [t.mod(k) == expect_rev]
        self._guarded(compare, ops, guard)
        ok, rev = await self.txn(compare, ops)
        if not ok:
            raise Conflict(f"sandbox {rec.sandbox_id} changed")
        return rev

    async def delete_sandbox(self, sid: str, expect_rev: int | None = None) -> int:
        """Delete the record and its route together, and release the volumes it mounts (their
        ``mounted_by`` naming it is cleared in the same transaction): every way a sandbox record
        goes (kill, undone create, the reconciler, lost retention) comes through here."""
        t = self.t
        k = self.sandbox_key(sid)
        for _ in range(CAS_RETRIES):
            cur = await self.get_sandbox(sid)
            if cur is None or not cur.value.volume_mounts:
                cmp = [t.mod(k) == expect_rev] if expect_rev is not None else []
                ops = [t.delete(k), t.delete(self.route_key(sid))]
                if cur is not None and expect_rev is None:
                    cmp = [t.mod(k) == cur.mod_revision]  # it must not gain volumes meanwhile
                ok, rev = await self.txn(cmp, ops)
                if ok:
                    return rev
                if expect_rev is not None:
                    raise Conflict(f"sandbox {sid} changed")
                continue
            if expect_rev is not None and cur.mod_revision != expect_rev:
                raise Conflict(f"sandbox {sid} changed")
            cmp = [t.mod(k) == cur.mod_revision]
            ops = [t.delete(k), t.delete(self.route_key(sid))]
            for m in dict.fromkeys(m.volume_id for m in cur.value.volume_mounts):
                vol = await self.get_volume(m)
                if vol is None or vol.value.mounted_by != sid:
                    continue
                released = master_pb2.Volume()
                released.CopyFrom(vol.value)
                released.mounted_by = ""
                vk = self.keys.volume(m)
                cmp.append(t.mod(vk) == vol.mod_revision)
                ops.append(t.put(vk, to_json(released)))
            ok, rev = await self.txn(cmp, ops)
            if ok:
                return rev
            # The record or one of its volumes changed meanwhile: read both again.
        raise Conflict(f"sandbox {sid} or its volumes are changing too fast")

    async def list_routes(self) -> list[Versioned[route_pb2.SandboxRoute]]:
        return await self._list(self.keys.routes(), route_pb2.SandboxRoute)

    async def delete_route_if_orphan(self, sid: str, route_rev: int) -> bool:
        """Delete a route only if it is unchanged and its sandbox record does not exist."""
        t = self.t
        ok, _ = await self.txn([t.mod(self.route_key(sid)) == route_rev, t.create(self.sandbox_key(sid)) == 0],
                               [t.delete(self.route_key(sid))])
        return ok

    # ---- volumes (services/master/volumes.py) ---------------------------------------------

    async def get_volume(self, volume_id: str) -> Versioned[master_pb2.Volume] | None:
        return await self._get(self.keys.volume(volume_id), master_pb2.Volume)

    async def get_volume_name(self, team_id: str, name: str) -> Versioned[master_pb2.Volume] | None:
        """A team's name index entry (its volume's id, name and team)."""
        return await self._get(self.keys.volume_name(team_id, name), master_pb2.Volume)

    async def list_volumes(self) -> list[Versioned[master_pb2.Volume]]:
        return await self._list(self.keys.volumes(), master_pb2.Volume)

    async def create_volume(self, vol: master_pb2.Volume, guard: TeamGuard | None = None) -> bool:
        """Write a new volume and its name index entry, only if neither exists (and the team's
        guard holds, when given); False otherwise."""
        t = self.t
        k, nk = self.keys.volume(vol.volume_id), self.keys.volume_name(vol.team_id, vol.name)
        index = master_pb2.Volume(volume_id=vol.volume_id, name=vol.name, team_id=vol.team_id)
        compare, ops = [t.create(k) == 0, t.create(nk) == 0], [t.put(k, to_json(vol)), t.put(nk, to_json(index))]
        self._guarded(compare, ops, guard)
        ok, _ = await self.txn(compare, ops)
        return ok

    async def update_volume(self, vol: master_pb2.Volume, expect_rev: int) -> int:
        t = self.t
        k = self.keys.volume(vol.volume_id)
        ok, rev = await self.txn([t.mod(k) == expect_rev], [t.put(k, to_json(vol))])
        if not ok:
            raise Conflict(f"volume {vol.volume_id} changed")
        return rev

    async def delete_volume(self, vol: Versioned[master_pb2.Volume]) -> bool:
        """Delete a volume and its name index entry, only if the volume is still at its revision."""
        t = self.t
        v = vol.value
        ok, _ = await self.txn([t.mod(self.keys.volume(v.volume_id)) == vol.mod_revision],
                               [t.delete(self.keys.volume(v.volume_id)),
                                t.delete(self.keys.volume_name(v.team_id, v.name))])
        return ok

    # ---- templates and aliases ------------------------------------------------------------

    async def get_template(self, tid: str) -> Versioned[master_pb2.Template] | None:
        return await self._get(self.keys.template(tid), master_pb2.Template)

    async def list_templates(self) -> list[Versioned[master_pb2.Template]]:
        return await self._list(self.keys.templates(), master_pb2.Template)

    async def put_template(self, tpl: master_pb2.Template) -> int:
        r = await self.etcd.put(self.keys.template(tpl.template_id), to_json(tpl))
        return r.header.revision

    def _alias_key(self, alias: master_pb2.TemplateAlias) -> bytes:
        return self.keys.alias(alias.alias, alias.team_id)

    async def delete_template(self, tid: str, aliases: list[master_pb2.TemplateAlias],
                              tombstones: Sequence[master_pb2.TemplateTombstone] = ()) -> bool:
        """Delete a template's record, its aliases and its tags, leaving the tombstones of its
        names, in one transaction; False when the record is already gone."""
        t = self.t
        k = self.keys.template(tid)
        tags = self.keys.template_tags(tid)
        ops = [t.delete(k), t.delete(tags, range_end=prefix_range_end(tags))]
        ops += [t.delete(self._alias_key(a)) for a in aliases]
        ops += [t.put(self.keys.tombstone(tomb.name), to_json(tomb)) for tomb in tombstones]
        ok, _ = await self.txn([t.create(k) > 0], ops)
        return ok

    # ---- template tags (services/master/tags.py) -------------------------------------------

    async def get_tag(self, tid: str, tag: str) -> Versioned[master_pb2.TemplateTag] | None:
        return await self._get(self.keys.template_tag(tid, tag), master_pb2.TemplateTag)

    async def list_tags(self, tid: str) -> list[Versioned[master_pb2.TemplateTag]]:
        return await self._list(self.keys.template_tags(tid), master_pb2.TemplateTag)

    async def write_tags(self, template: Versioned[master_pb2.Template], put: Sequence[master_pb2.TemplateTag] = (),
                         delete: Sequence[str] = ()) -> bool:
        """Write and delete tags of a template in one transaction, only if its record is still at
        ``template.mod_revision``: a template deleted (or rebuilt) meanwhile keeps no tag written
        for what it was. The record is rewritten unchanged, so that tag writes of one template
        serialize (each one counts the others'). False when the record changed or is gone."""
        t = self.t
        tid = template.value.template_id
        k = self.keys.template(tid)
        ops = [t.put(k, to_json(template.value))]
        ops += [t.put(self.keys.template_tag(tid, tag.tag), to_json(tag)) for tag in put]
        ops += [t.delete(self.keys.template_tag(tid, name)) for name in delete]
        ok, _ = await self.txn([t.mod(k) == template.mod_revision], ops)
        return ok

    async def get_tombstone(self, name: str) -> Versioned[master_pb2.TemplateTombstone] | None:
        return await self._get(self.keys.tombstone(name), master_pb2.TemplateTombstone)

    def _claimed(self, compare: list, claims: Sequence[NameClaim]) -> None:
        compare.extend(self.t.mod(self.keys.tombstone(c.name)) == c.mod_revision for c in claims)

    async def get_alias(self, alias: str, team_id: str = "") -> Versioned[master_pb2.TemplateAlias] | None:
        """A public alias (``team_id`` empty) or one of a team's own."""
        v = await self._get(self.keys.alias(alias, team_id), master_pb2.TemplateAlias)
        if v is not None:
            v.value.team_id = team_id  # the key says whose it is, whatever the value says
        return v

    async def list_aliases(self) -> list[Versioned[master_pb2.TemplateAlias]]:
        """Every alias: the public ones and every team's."""
        public, teams = await asyncio.gather(self._list(self.keys.aliases(), master_pb2.TemplateAlias),
                                             self._list(self.keys.team_aliases(), master_pb2.TemplateAlias))
        for v in public:
            v.value.team_id = ""
        return public + [v for v in teams if v.value.team_id]

    async def put_alias(self, alias: master_pb2.TemplateAlias, only_if_absent: bool = False,
                        claim: NameClaim | None = None) -> bool:
        t = self.t
        k = self._alias_key(alias)
        compare = [t.create(k) == 0] if only_if_absent else []
        self._claimed(compare, [claim] if claim is not None else [])
        ok, _ = await self.txn(compare, [t.put(k, to_json(alias))])
        return ok

    async def delete_template_at(self, tid: str, expect_rev: int) -> bool:
        """Delete a template record only if it is still the one written at ``expect_rev``."""
        t = self.t
        k = self.keys.template(tid)
        ok, _ = await self.txn([t.mod(k) == expect_rev], [t.delete(k)])
        return ok

    # ---- template builds ------------------------------------------------------------------

    def build_key(self, job_id: str) -> bytes:
        return self.keys.build(job_id)

    async def get_build(self, job_id: str) -> Versioned[master_pb2.TemplateBuild] | None:
        return await self._get(self.build_key(job_id), master_pb2.TemplateBuild)

    async def list_builds(self) -> list[Versioned[master_pb2.TemplateBuild]]:
        return await self._list(self.keys.builds(), master_pb2.TemplateBuild)

    async def create_build(self, job: master_pb2.TemplateBuild, building: master_pb2.Template,
                           claim: NameClaim) -> tuple[bool, int]:
        """Write a new job and its template's BUILDING record together, only if no template and no
        alias has the template's name yet and its tombstone is as ``claim`` found it (this claims
        the id). Returns (written, revision)."""
        t = self.t
        tk = self.keys.template(job.template_id)
        ak = self.keys.alias(job.template_id)
        bk = self.build_key(job.job_id)
        compare = [t.create(tk) == 0, t.create(ak) == 0, t.create(bk) == 0]
        self._claimed(compare, [claim])
        return await self.txn(compare, [t.put(bk, to_json(job)), t.put(tk, to_json(building))])

    async def update_build(self, job: master_pb2.TemplateBuild, expect_rev: int) -> int:
        t = self.t
        k = self.build_key(job.job_id)
        ok, rev = await self.txn([t.mod(k) == expect_rev], [t.put(k, to_json(job))])
        if not ok:
            raise Conflict(f"template build {job.job_id} changed")
        return rev

    async def finish_build(self, job: master_pb2.TemplateBuild, expect_rev: int,
                           template: master_pb2.Template, aliases: list[str],
                           tags: Sequence[master_pb2.TemplateTag] = ()) -> int:
        """A READY build: the job, its template's record, its aliases (in the template's team's
        namespace) and its tags in one transaction: whoever sees the job ready finds them all."""
        t = self.t
        k = self.build_key(job.job_id)
        ops = [t.put(k, to_json(job)), t.put(self.keys.template(template.template_id), to_json(template))]
        for a in aliases:
            rec = master_pb2.TemplateAlias(alias=a, template_id=template.template_id, team_id=template.team_id)
            ops.append(t.put(self._alias_key(rec), to_json(rec)))
        ops += [t.put(self.keys.template_tag(template.template_id, tag.tag), to_json(tag)) for tag in tags]
        ok, rev = await self.txn([t.mod(k) == expect_rev], ops)
        if not ok:
            raise Conflict(f"template build {job.job_id} changed")
        return rev

    async def delete_build(self, job_id: str, expect_rev: int) -> bool:
        t = self.t
        k = self.build_key(job_id)
        ok, _ = await self.txn([t.mod(k) == expect_rev], [t.delete(k)])
        return ok

    # ---- API keys -------------------------------------------------------------------------

    async def get_apikey(self, key_id: str) -> master_pb2.ApiKey | None:
        v = await self._get(self.keys.apikey(key_id), master_pb2.ApiKey)
        return v.value if v else None

    async def list_apikeys(self) -> list[master_pb2.ApiKey]:
        return [v.value for v in await self._list(self.keys.apikeys(), master_pb2.ApiKey)]

    async def create_apikey(self, key: master_pb2.ApiKey) -> bool:
        return await self._put_new(self.keys.apikey(key.key_id), key)

    async def delete_apikey(self, key_id: str) -> bool:
        r = await self.etcd.delete(self.keys.apikey(key_id))
        return r is not None

    # ---- teams ----------------------------------------------------------------------------

    async def get_team(self, team_id: str) -> master_pb2.Team | None:
        v = await self.team_record(team_id)
        return v.value if v else None

    async def team_record(self, team_id: str) -> Versioned[master_pb2.Team] | None:
        return await self._get(self.keys.team(team_id), master_pb2.Team)

    async def put_team(self, team: master_pb2.Team, expect_rev: int) -> bool:
        """Write a team record if it is still at ``expect_rev`` (0: only if absent)."""
        t = self.t
        k = self.keys.team(team.team_id)
        ok, _ = await self.txn([t.mod(k) == expect_rev], [t.put(k, to_json(team))])
        return ok

    async def list_teams(self) -> list[master_pb2.Team]:
        return [v.value for v in await self._list(self.keys.teams(), master_pb2.Team)]

    async def create_team(self, team: master_pb2.Team) -> bool:
        return await self._put_new(self.keys.team(team.team_id), team)

    # ---- nodes (written by the cubelets) --------------------------------------------------

    async def list_masters(self) -> list[master_pb2.MasterIdentity]:
        """The live masters: each one's presence key (``cube_common.leased_key``)."""
        return sorted((v.value for v in await self._list(self.keys.masters(), master_pb2.MasterIdentity)),
                      key=lambda m: m.master_id)

    async def list_nodes(self) -> list[cubelet_pb2.NodeStatus]:
        return [v.value for v in await self._list(self.keys.nodes(), cubelet_pb2.NodeStatus)]

    async def get_node(self, node_id: str) -> cubelet_pb2.NodeStatus | None:
        v = await self._get(self.keys.node(node_id), cubelet_pb2.NodeStatus)
        return v.value if v else None

    async def node_heartbeats(self) -> dict[str, float]:
        """When each registered node last renewed its registration lease (epoch seconds, to the
        second): etcd's own count (granted TTL minus what is left), so no node's clock is trusted.
        Nodes whose record has no lease (or whose lease just ended) are absent."""
        pfx = self.keys.nodes()
        r = await self.etcd.get_prefix(pfx, keys_only=True)
        leases = {kv.key[len(pfx):].decode(errors="replace"): kv.lease for kv in r.kvs if kv.lease}
        if not leases:
            return {}
        ids = sorted(set(leases.values()))
        infos = await asyncio.gather(*(self.call(lambda c, i=i: c.get_lease_info(i, keys=False), op="lease_info")
                                       for i in ids))
        now = time.time()
        renewed = {i: now - (info.grantedTTL - info.TTL) for i, info in zip(ids, infos, strict=True) if info.TTL > 0}
        return {node: renewed[lease] for node, lease in leases.items() if lease in renewed}

    # ---- operators' records of nodes (written by the master) ------------------------------

    async def list_node_admins(self) -> list[master_pb2.NodeAdmin]:
        return [v.value for v in await self._list(self.keys.node_admins(), master_pb2.NodeAdmin)]

    async def draining_nodes(self) -> frozenset[str]:
        return frozenset(a.node_id for a in await self.list_node_admins() if a.draining)

    async def put_node_admin(self, rec: master_pb2.NodeAdmin) -> None:
        await self.etcd.put(self.keys.node_admin(rec.node_id), to_json(rec))

    async def delete_node_admin(self, node_id: str) -> None:
        await self.etcd.delete(self.keys.node_admin(node_id))

    async def remove_node(self, node_id: str) -> None:
        """Delete a node's registration and its operator's record together."""
        t = self.t
        await self.txn([], [t.delete(self.keys.node(node_id)), t.delete(self.keys.node_admin(node_id))])
