"""End-time enforcement (leader only): a running sandbox past its end time is killed, or paused
when it was created with auto-pause. set_timeout, connect and refreshes move the end time. A
paused sandbox is deleted once it has been paused for the operator's retention
(``paused_retention_s``): paused state is disk a team holds without running anything.

A pause its team's paused quota refuses becomes a kill: the quota is a limit the team's own
lifecycle settings cannot get around, and a sandbox past its end time must stop running."""

from __future__ import annotations

import asyncio
import time

from cube_common.etcd import EtcdUnavailable
from cube_common.teams import OPERATOR
from sdk.gen.cube.v1 import master_pb2
from services.master import errors
from services.master.clock import secs
from services.master.log import get_logger
from services.master.sandboxes import Sandboxes

log = get_logger("timeouts")
CONCURRENCY = 8


async def expire_once(sandboxes: Sandboxes, now: float | None = None) -> list[str]:
    """Act on every running sandbox whose end time has passed and every paused one past its
    retention. Returns the ids acted on."""
    now = time.time() if now is None else now
    retention = sandboxes.settings.paused_retention_s
    records = [v.value for v in await sandboxes.store.list_sandboxes()]
    due = [r for r in records if r.phase == master_pb2.SANDBOX_PHASE_RUNNING and secs(r.end_at) <= now]
    stale = [r for r in records if retention and r.phase == master_pb2.SANDBOX_PHASE_PAUSED
             and r.HasField("paused_at") and secs(r.paused_at) + retention <= now]
    sem = asyncio.Semaphore(CONCURRENCY)

    async def act(rec: master_pb2.Sandbox) -> None:
        async with sem:
            try:
                if rec.phase == master_pb2.SANDBOX_PHASE_PAUSED:
                    await sandboxes.kill(rec.sandbox_id, OPERATOR, reason="paused retention ended")
                elif rec.auto_pause:
                    try:
                        await sandboxes.pause(rec.sandbox_id, OPERATOR, reason="timeout",
                                              filesystem_only=rec.auto_pause_filesystem_only)
                    except errors.Exhausted as e:
                        log.warning("paused quota reached at timeout; killing instead",
                                    extra={"sandbox_id": rec.sandbox_id, "error": str(e)})
                        await sandboxes.kill(rec.sandbox_id, OPERATOR, reason="timeout, paused quota reached")
                else:
                    await sandboxes.kill(rec.sandbox_id, OPERATOR, reason="timeout")
            except (errors.NotFound, errors.FailedPrecondition):
                pass  # killed, paused or extended meanwhile
            except (errors.MasterError, EtcdUnavailable) as e:
                log.warning("timeout action failed; retrying next tick",
                            extra={"sandbox_id": rec.sandbox_id, "error": str(e)})

    await asyncio.gather(*(act(r) for r in due + stale))
    return [r.sandbox_id for r in due + stale]


async def run(sandboxes: Sandboxes, tick_s: float) -> None:
    while True:
        try:
            await expire_once(sandboxes)
        except EtcdUnavailable:
            pass
        except Exception:
            log.exception("timeout loop error")
        await asyncio.sleep(tick_s)
