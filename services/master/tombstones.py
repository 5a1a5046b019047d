"""Tombstones: a deleted template's names stay its team's. E2B's rule: a deleted template's id and
aliases cannot be claimed by another team.

Template ids and public aliases are one cluster-wide namespace (ids name snapshots on the nodes;
a public alias resolves for every team). When a template is deleted, its id and each of its public
aliases leave a tombstone at <prefix>/template-tombstones/<name> naming the team that owned the
template ("" for a public one), written in the transaction that deletes it. A team's own aliases
leave none: they live in its namespace, where no other team can claim anything.

Invariants:
- A team other than the tombstone's cannot claim the name, as a template id (a build) or as an
  alias (a build's aliases, SetTemplateAlias): ALREADY_EXISTS, with the message a live name gets,
  so nothing tells it that the name once existed.
- The owning team and admins (operators included) may claim it again. The tombstone stays under
  the live name, where it changes nothing; the next delete rewrites it.
- A claim of a template id or of an alias by SetTemplateAlias requires, in the transaction that
  writes it, the tombstone unchanged since the check (store.NameClaim): a delete committing in
  between fails the claim rather than letting another team through. A build's aliases are
  checked when the build starts, as their live names are.
- Tombstones are never removed; they are small.
"""

from __future__ import annotations

from collections.abc import Iterable

from cube_common.teams import Caller
from sdk.gen.cube.v1 import master_pb2 as P
from services.master.clock import ts
from services.master.store import NameClaim, Store


def for_deleted(tpl: P.Template, aliases: Iterable[P.TemplateAlias]) -> list[P.TemplateTombstone]:
    """The tombstones a template leaves: its id and its public aliases, owned by its team."""
    names = [tpl.template_id, *sorted({a.alias for a in aliases if not a.team_id} - {tpl.template_id})]
    now = ts()
    return [P.TemplateTombstone(name=n, template_id=tpl.template_id, team_id=tpl.team_id, deleted_at=now)
            for n in names]


async def claim(store: Store, name: str, caller: Caller) -> NameClaim | None:
    """The claim a write of ``name`` by ``caller`` must carry, or None when the name is another
    team's tombstone (the caller answers ALREADY_EXISTS, as for a live name)."""
    tomb = await store.get_tombstone(name)
    if tomb is None:
        return NameClaim(name, 0)
    if not (caller.admin or tomb.value.team_id == caller.team_id):
        return None
    return NameClaim(name, tomb.mod_revision)
