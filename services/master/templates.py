"""The template registry: records at <prefix>/templates/<id>, public aliases at
<prefix>/template-aliases/<alias>, a team's own at <prefix>/team-aliases/<team_id>/<alias>.

Templates are built (and their snapshots kept) by the cubelets; a node lists the ones it has in
NodeStatus.templates. The registry learns a template the first time it is asked for one a node
has (and the leader syncs them periodically), so a template built on a node is usable without
a separate registration step. The SDKs' default names (`base`, `code-interpreter-v1`) are aliases
of the default template, created by the leader when absent.

Ownership: a template with a team id belongs to that team; without one it is public (the default
template, what operators build and register, what a node reports that etcd lacks, and records
written before teams existed). A caller sees the public templates and its own team's (admins:
all); another team's answers NOT_FOUND, as an unknown name does. Public templates are usable by
every team and changed (deleted, re-aliased, rebuilt) only by admins: PERMISSION_DENIED.

Names: template ids are one namespace for the whole cluster (they name snapshots on the nodes);
aliases are per team. A name is resolved as the caller's team's alias, then a public alias, then
a template id the caller may use. A team cannot claim a public alias (that needs an admin), and
its aliases never hide another team's, which live in their own namespace. A deleted template's id
and public aliases stay its team's (tombstones.py). A name may carry E2B's tag, `name:tag`: the
template's build that tag names, which must be its current one (tags.py; `name:default` is the
current build); a name is looked up whole first, so an alias holding a ':' still resolves.
"""

from __future__ import annotations

import asyncio
import builtins
import re

from cube_common.etcd import EtcdUnavailable
from cube_common.teams import Caller
from sdk.gen.cube.v1 import cubelet_pb2, master_pb2
from services.master import errors, tags
from services.master.clock import ts
from services.master.log import get_logger
from services.master.nodes import NodeClients
from services.master.settings import Settings
from services.master.store import Store
from services.master.tombstones import claim, for_deleted

log = get_logger("templates")

# Template ids and aliases become etcd key segments: no slashes, nothing odd.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\Z")


def from_info(info: cubelet_pb2.TemplateInfo, default_envd: str) -> master_pb2.Template:
    t = master_pb2.Template(
        template_id=info.template_id, vcpus=info.vcpus or 1, memory_mb=info.memory_mb or 512,
        disk_size_mb=info.writable_layer_mb or 1024, envd_version=info.envd_version or default_envd,
        source=info.source, status=master_pb2.TEMPLATE_STATUS_READY, snapshot_bytes=info.snapshot_bytes,
        no_memory_sharing=info.no_memory_sharing, expose_ports=list(info.expose_ports),
        build_id=info.template_id)
    t.created_at.CopyFrom(info.created_at if info.HasField("created_at") else ts())
    t.updated_at.CopyFrom(t.created_at)
    return t


def visible(caller: Caller, tpl: master_pb2.Template) -> bool:
    return not tpl.team_id or caller.sees(tpl.team_id)


def in_use_message(tid: str, users: list[master_pb2.Sandbox], shown: int = 20) -> str:
    names = [f"{s.sandbox_id} ({master_pb2.SandboxPhase.Name(s.phase).removeprefix('SANDBOX_PHASE_').lower()})"
             for s in users[:shown]]
    more = f" and {len(users) - shown} more" if len(users) > shown else ""
    return (f"template '{tid}' is used by {len(users)} sandbox(es): {', '.join(names)}{more}; "
            "kill them first or delete with force (which kills them)")


async def _none() -> None:
    return None


class Templates:
    def __init__(self, store: Store, nodes: NodeClients, settings: Settings):
        self.store = store
        self.nodes = nodes
        self.settings = settings
        self._bg: set[asyncio.Task] = set()

    async def _decorate(self, tpl: master_pb2.Template, caller: Caller, aliases=None, nodes=None
                        ) -> master_pb2.Template:
        """The record with its aliases (the public ones, its team's, and the caller's team's own
        names for it) and the nodes that have it."""
        out = master_pb2.Template()
        out.CopyFrom(tpl)
        aliases = aliases if aliases is not None else await self.store.list_aliases()
        nodes = nodes if nodes is not None else await self.store.list_nodes()
        spaces = {"", tpl.team_id, caller.team_id}
        del out.aliases[:]
        out.aliases.extend(sorted(a.value.alias for a in aliases
                                  if a.value.template_id == tpl.template_id and a.value.team_id in spaces))
        del out.node_ids[:]
        out.node_ids.extend(sorted(n.node_id for n in nodes if tpl.template_id in n.templates))
        return out

    async def by_id(self, tid: str) -> master_pb2.Template | None:
        """The record of a template id (registering one a node has), whoever's it is."""
        rec = await self.store.get_template(tid)
        return rec.value if rec is not None else await self.discover(tid)

    async def resolve(self, ref: str, caller: Caller) -> tuple[master_pb2.Template, str]:
        """Template record for an id or alias the caller may use, optionally with a tag
        (`name:tag`, which must name its current build: tags.py), and the alias used ("" for an
        id); the order is the module docstring's."""
        tpl, alias, tag = await self.resolve_tagged(ref, caller)
        if tag:
            await tags.check_pinned(self.store, tpl, alias or tpl.template_id, tag)
        return tpl, alias

    async def resolve_tagged(self, ref: str, caller: Caller) -> tuple[master_pb2.Template, str, str]:
        """``resolve`` less the tag's check: the record, the alias used, and the tag the name
        carries, lower-cased ("" for none and for `default`, which names the current build). A
        name is first looked up whole (aliases may hold a ':'), then as `name:tag`."""
        # E2B names carry a tag (`name:tag`; a snapshot's id is `id:default`).
        ref = ref.removesuffix(":default") if ref else ref
        if not ref or not NAME_RE.match(ref):
            raise errors.NotFound(f"template '{ref}' not found")
        try:
            tpl, alias = await self._named(ref, caller)
            return tpl, alias, ""
        except errors.NotFound:
            name, sep, tag = ref.rpartition(":")
            if not (sep and name and tag):
                raise
        tpl, alias = await self._named(name, caller)
        tag = tag.lower()
        return tpl, alias, "" if tag == tags.DEFAULT else tag

    async def _named(self, ref: str, caller: Caller) -> tuple[master_pb2.Template, str]:
        """The record a name without a tag resolves to, and the alias used."""
        # One round trip for the three places the name may be.
        mine, public, direct = await asyncio.gather(
            self.store.get_alias(ref, caller.team_id) if caller.team_id else _none(),
            self.store.get_alias(ref), self.store.get_template(ref))
        a = mine or public
        alias, tid = (ref, a.value.template_id) if a is not None else ("", ref)
        tpl = direct.value if direct is not None and tid == ref else await self.by_id(tid)
        if tpl is None or not visible(caller, tpl):
            raise errors.NotFound(f"template '{ref}' not found")
        return tpl, alias

    async def managed(self, ref: str, caller: Caller) -> master_pb2.Template:
        """The template ``ref`` names if the caller may change it (see the module docstring)."""
        tpl, _ = await self.resolve(ref, caller)
        self.may_change(tpl, caller)
        return tpl

    @staticmethod
    def may_change(tpl: master_pb2.Template, caller: Caller) -> None:
        """PermissionDenied unless the caller, who may use ``tpl``, may also change it."""
        if not tpl.team_id and not caller.admin:
            raise errors.PermissionDenied(f"template '{tpl.template_id}' is public; only an admin can change it")

    async def discover(self, tid: str) -> master_pb2.Template | None:
        """Register a template a node reports having (NodeStatus.templates) but etcd lacks."""
        for node in await self.store.list_nodes():
            if tid not in node.templates:
                continue
            try:
                resp = await self.nodes.call(node, "ListTemplates", cubelet_pb2.ListTemplatesRequest())
            except errors.MasterError:
                continue
            for info in resp.templates:
                if info.template_id == tid and not info.base_template_id:
                    tpl = from_info(info, self.settings.envd_version)
                    await self.store.put_template(tpl)
                    log.info("template registered from node", extra={"template_id": tid, "node_id": node.node_id})
                    return tpl
        return None

    async def sync_from_nodes(self) -> int:
        """Leader: register every template some node has and etcd lacks. Returns how many."""
        known = {t.value.template_id for t in await self.store.list_templates()}
        added = 0
        for node in await self.store.list_nodes():
            missing = [t for t in node.templates if t not in known]
            if not missing:
                continue
            try:
                resp = await self.nodes.call(node, "ListTemplates", cubelet_pb2.ListTemplatesRequest())
            except errors.MasterError:
                continue
            for info in resp.templates:
                if info.base_template_id:
                    continue  # a snapshot of a team's sandbox is registered by its taker only (snapshots.py)
                if info.template_id in missing and info.template_id not in known and NAME_RE.match(info.template_id):
                    await self.store.put_template(from_info(info, self.settings.envd_version))
                    known.add(info.template_id)
                    added += 1
        return added

    async def ensure_default_aliases(self) -> None:
        for alias in self.settings.default_aliases:
            record = master_pb2.TemplateAlias(alias=alias, template_id=self.settings.default_template)
            if await self.store.put_alias(record, only_if_absent=True):
                log.info("default alias created", extra={"alias": alias, "template_id": record.template_id})

    async def list(self, caller: Caller) -> list[master_pb2.Template]:
        aliases, nodes, recs = await asyncio.gather(self.store.list_aliases(), self.store.list_nodes(),
                                                    self.store.list_templates())
        mine = sorted((r.value for r in recs if visible(caller, r.value)), key=lambda t: t.template_id)
        return [await self._decorate(t, caller, aliases, nodes) for t in mine]

    async def get(self, ref: str, caller: Caller) -> master_pb2.Template:
        tpl, _ = await self.resolve(ref, caller)
        return await self._decorate(tpl, caller)

    async def put(self, tpl: master_pb2.Template, caller: Caller) -> master_pb2.Template:
        """Register a record (admins only); its aliases go to its team's namespace (a public one's: the
        public namespace)."""
        if not NAME_RE.match(tpl.template_id):
            raise errors.InvalidArgument(f"invalid template id '{tpl.template_id}'")
        for a in tpl.aliases:
            if not NAME_RE.match(a):
                raise errors.InvalidArgument(f"invalid alias '{a}'")
        rec = master_pb2.Template()
        rec.CopyFrom(tpl)
        del rec.aliases[:]
        del rec.node_ids[:]
        if not rec.HasField("created_at"):
            rec.created_at.CopyFrom(ts())
        rec.updated_at.CopyFrom(ts())
        if not rec.envd_version:
            rec.envd_version = self.settings.envd_version
        if rec.status == master_pb2.TEMPLATE_STATUS_UNSPECIFIED:
            rec.status = master_pb2.TEMPLATE_STATUS_READY
        await self.store.put_template(rec)
        for a in tpl.aliases:
            await self.store.put_alias(master_pb2.TemplateAlias(alias=a, template_id=rec.template_id,
                                                                team_id=rec.team_id))
        return await self._decorate(rec, caller)

    async def set_alias(self, alias: master_pb2.TemplateAlias, caller: Caller) -> master_pb2.TemplateAlias:
        """Point an alias at a template the caller may use: a public alias (admins only), else one
        in the caller's team's namespace (an operator's: the public one)."""
        if not NAME_RE.match(alias.alias):
            raise errors.InvalidArgument(f"invalid alias '{alias.alias}'")
        tpl = await self.by_id(alias.template_id) if NAME_RE.match(alias.template_id) else None
        if tpl is None or not visible(caller, tpl):
            raise errors.NotFound(f"template '{alias.template_id}' not found")
        public = await self.store.get_alias(alias.alias)
        if public is not None and not caller.admin:
            raise errors.PermissionDenied(f"alias '{alias.alias}' is public; only an admin can change it")
        team_id = "" if public is not None else caller.team_id
        rec = master_pb2.TemplateAlias(alias=alias.alias, template_id=tpl.template_id, team_id=team_id)
        # Another team's deleted template's name is taken, as a live one is (tombstones.py).
        name = await claim(self.store, alias.alias, caller)
        if name is None or not await self.store.put_alias(rec, claim=name):
            raise errors.AlreadyExists(f"alias '{alias.alias}' is already taken")
        log.info("alias set", extra={"alias": rec.alias, "template_id": rec.template_id, "team_id": team_id})
        return rec

    async def resolve_alias(self, alias: str, caller: Caller) -> master_pb2.TemplateAlias:
        """The caller's team's alias, else a public one, if it names a template the caller may use
        (or one not registered yet: the default aliases exist before their template)."""
        a = None
        if NAME_RE.match(alias or ""):
            a = (await self.store.get_alias(alias, caller.team_id) if caller.team_id else None) \
                or await self.store.get_alias(alias)
        if a is not None:
            rec = await self.store.get_template(a.value.template_id)
            if rec is None or visible(caller, rec.value):
                return a.value
        raise errors.NotFound(f"template alias '{alias}' not found")

    async def delete(self, tpl: master_pb2.Template, in_use: builtins.list[master_pb2.Sandbox], kill) -> bool:
        """Delete a template everywhere: on its nodes first (so a failure leaves the record for a
        retry), then its record and every alias of it (public and the teams'), leaving the
        tombstones of its names. The caller checked that it may (``managed``). ``in_use`` are the
        sandboxes that use it (running or paused); without ``kill`` (a coroutine function killing
        one) they make this FAILED_PRECONDITION, with a message that names them. A template being
        built cannot be deleted until its build ends."""
        tid = tpl.template_id
        if tpl.status == master_pb2.TEMPLATE_STATUS_BUILDING:
            raise errors.FailedPrecondition(
                f"template '{tid}' is being built (build {tpl.build_id}); wait for the build to end")
        if in_use:
            if kill is None:
                raise errors.FailedPrecondition(in_use_message(tid, in_use))
            for sb in in_use:
                try:
                    await kill(sb.sandbox_id)
                except errors.NotFound:
                    pass
        for node in await self.store.list_nodes():
            if tid in node.templates:
                try:
                    await self.nodes.call(node, "DeleteTemplate",
                                          cubelet_pb2.DeleteTemplateRequest(template_id=tid, force=True))
                except errors.NotFound:
                    pass
        aliases = [a.value for a in await self.store.list_aliases() if a.value.template_id == tid]
        ok = await self.store.delete_template(tid, aliases, for_deleted(tpl, aliases))
        log.info("template deleted", extra={"template_id": tid, "team_id": tpl.team_id,
                                            "aliases": [f"{a.team_id}/{a.alias}" if a.team_id else a.alias
                                                        for a in aliases]})
        return ok

    def note_spawn(self, tid: str) -> None:
        """Count a spawn in the template's record, in the background (statistics only)."""
        async def bump():
            try:
                rec = await self.store.get_template(tid)
                if rec is None:
                    return
                t = rec.value
                t.spawn_count += 1
                t.last_spawned_at.CopyFrom(ts())
                await self.store.put_template(t)
            except EtcdUnavailable:
                pass
        task = asyncio.get_running_loop().create_task(bump())
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)
