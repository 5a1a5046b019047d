"""The etcd key layout of a Cube cluster: the one place that spells a key.

Every value is proto3 JSON of one cube.v1 message (``etcdctl get --prefix /cube/`` explains the
cluster), except the proxies' applied revisions, which are decimal text:

    <prefix>/sandboxes/<sandbox_id>                  Sandbox           (master)
    <prefix>/routes/<sandbox_id>                     SandboxRoute      (master; the proxies watch it)
    <prefix>/templates/<template_id>                 Template          (master)
    <prefix>/template-aliases/<alias>                TemplateAlias     (master; a public alias)
    <prefix>/team-aliases/<team_id>/<alias>          TemplateAlias     (master; a team's own alias)
    <prefix>/template-tombstones/<name>              TemplateTombstone (master; a deleted template's id or public alias)
    <prefix>/template-tags/<template_id>/<tag>       TemplateTag       (master; deleted with its template)
    <prefix>/template-builds/<job_id>                TemplateBuild     (master; never any registry credentials)
    <prefix>/apikeys/<key_id>                        ApiKey            (master; only a SHA-256 of the key)
    <prefix>/teams/<team_id>                         Team              (master; its quota; the team's admission guard)
    <prefix>/nodes/<node_id>                         NodeStatus        (each cubelet, under its lease)
    <prefix>/node-admin/<node_id>                    NodeAdmin         (master, for operators: draining)
    <prefix>/volumes/<volume_id>                     Volume            (master; services/master/volumes.py)
    <prefix>/volume-names/<team_id>/<name>           Volume            (master; the name index: id, name, team only)
    <prefix>/leader                                  MasterIdentity    (the leader, under its lease)
    <prefix>/proxy/<proxy_id>/applied_revision       "<revision>"      (each proxy, under its lease; see route_ack)

Invariants: keys are bytes (what etcd takes); a collection's prefix ends with "/" so that
``sandboxes/ab`` never lists ``sandboxes/abc``; ids never contain "/" (their owners check).
"""

from __future__ import annotations

from dataclasses import dataclass

from cube_common import defaults

APPLIED_SUFFIX = "/applied_revision"


def normalize_prefix(prefix: str) -> str:
    """``cube``, ``/cube/`` and ``/cube`` are the same root: ``/cube``."""
    return "/" + prefix.strip("/")


@dataclass(frozen=True)
class Keys:
    """The keys under one root (tests use their own roots on a shared etcd)."""

    root: str = defaults.ETCD_PREFIX

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", normalize_prefix(self.root))

    def key(self, *parts: str) -> bytes:
        return "/".join((self.root, *parts)).encode()

    def collection(self, name: str) -> bytes:
        return self.key(name) + b"/"

    # ---- one function per record kind ----------------------------------------------------

    def sandbox(self, sandbox_id: str) -> bytes:
        return self.key("sandboxes", sandbox_id)

    def route(self, sandbox_id: str) -> bytes:
        return self.key("routes", sandbox_id)

    def template(self, template_id: str) -> bytes:
        return self.key("templates", template_id)

    def alias(self, alias: str, team_id: str = "") -> bytes:
        """A public alias (``team_id`` empty) or one in a team's namespace."""
        return self.key("team-aliases", team_id, alias) if team_id else self.key("template-aliases", alias)

    def tombstone(self, name: str) -> bytes:
        """What is left of a deleted template's id or public alias (services/master/tombstones.py)."""
        return self.key("template-tombstones", name)

    def template_tag(self, template_id: str, tag: str) -> bytes:
        """A tag of a template (E2B's `name:tag`; services/master/tags.py)."""
        return self.key("template-tags", template_id, tag)

    def build(self, job_id: str) -> bytes:
        return self.key("template-builds", job_id)

    def apikey(self, key_id: str) -> bytes:
        return self.key("apikeys", key_id)

    def team(self, team_id: str) -> bytes:
        return self.key("teams", team_id)

    def node(self, node_id: str) -> bytes:
        return self.key("nodes", node_id)

    def node_admin(self, node_id: str) -> bytes:
        """An operator's record of a node (drain); never written by the cubelet."""
        return self.key("node-admin", node_id)

    def volume(self, volume_id: str) -> bytes:
        return self.key("volumes", volume_id)

    def volume_name(self, team_id: str, name: str) -> bytes:
        """A team's volume name, pointing at its id (names are unique within a team)."""
        return self.key("volume-names", team_id, name)

    def leader(self) -> bytes:
        return self.key("leader")

    def master(self, master_id: str) -> bytes:
        """A live master's identity, under its lease (gone a TTL after the process is)."""
        return self.key("masters", master_id)

    # ---- collections -----------------------------------------------------------------------

    def sandboxes(self) -> bytes:
        return self.collection("sandboxes")

    def routes(self) -> bytes:
        return self.collection("routes")

    def templates(self) -> bytes:
        return self.collection("templates")

    def aliases(self) -> bytes:
        """The public aliases."""
        return self.collection("template-aliases")

    def team_aliases(self) -> bytes:
        """Every team's own aliases."""
        return self.collection("team-aliases")

    def tombstones(self) -> bytes:
        return self.collection("template-tombstones")

    def template_tags(self, template_id: str) -> bytes:
        """The tags of one template."""
        return self.key("template-tags", template_id) + b"/"

    def builds(self) -> bytes:
        return self.collection("template-builds")

    def apikeys(self) -> bytes:
        return self.collection("apikeys")

    def teams(self) -> bytes:
        return self.collection("teams")

    def nodes(self) -> bytes:
        return self.collection("nodes")

    def node_admins(self) -> bytes:
        return self.collection("node-admin")

    def masters(self) -> bytes:
        return self.collection("masters")

    def volumes(self) -> bytes:
        return self.collection("volumes")

    def volume_names(self) -> bytes:
        return self.collection("volume-names")

    # ---- the proxies' route acknowledgements ------------------------------------------------

    def proxies(self) -> bytes:
        return self.collection("proxy")

    def proxy_applied(self, proxy_id: str) -> bytes:
        return self.key("proxy", proxy_id) + APPLIED_SUFFIX.encode()

    def proxy_of_applied(self, key: bytes) -> str | None:
        """The proxy id an applied-revision key belongs to, or None for any other key."""
        pp = self.proxies()
        suffix = APPLIED_SUFFIX.encode()
        if not (key.startswith(pp) and key.endswith(suffix)):
            return None
        return key[len(pp):-len(suffix)].decode("utf-8", "replace")
