"""Allocation records, persisted so that a restarted CubeVS re-adopts its sandboxes.

The kernel holds the datapath (pinned maps, attached programs, taps); this file holds what the
kernel cannot: sandbox IDs and the policy as given. It is rewritten atomically on every change.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from services.vs.guest import GuestNetwork
from services.vs.policy import NetworkPolicy

STATE_VERSION = 1


@dataclass
class Allocation:
    sandbox_id: str
    tap: str
    ifindex: int
    address: ipaddress.IPv4Address
    slot: int
    policy_id: int
    guest: GuestNetwork
    policy: NetworkPolicy
    created_at: float = dataclasses.field(default_factory=time.time)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["address"] = str(self.address)
        d["policy"]["allow_out"] = list(self.policy.allow_out)
        d["policy"]["deny_out"] = list(self.policy.deny_out)
        d["policy"]["exposed_ports"] = list(self.policy.exposed_ports)
        return d

    @classmethod
    def from_json(cls, d: dict) -> Allocation:
        p = d["policy"]
        return cls(
            sandbox_id=d["sandbox_id"], tap=d["tap"], ifindex=int(d["ifindex"]),
            address=ipaddress.IPv4Address(d["address"]), slot=int(d["slot"]), policy_id=int(d["policy_id"]),
            guest=GuestNetwork(**d["guest"]),
            policy=NetworkPolicy(allow_internet_access=bool(p["allow_internet_access"]),
                                 allow_out=tuple(p["allow_out"]), deny_out=tuple(p["deny_out"]),
                                 exposed_ports=tuple(int(x) for x in p["exposed_ports"]),
                                 expose_all_ports=bool(p.get("expose_all_ports", False))),
            created_at=float(d.get("created_at", 0.0)),
        )


class StateFile:
    def __init__(self, path: Path):
        self.path = path

    def load(self) -> tuple[list[Allocation], int]:
        """(allocations, next policy id); empty if there is no state yet."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return [], 1
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"{self.path}: unsupported state version {data.get('version')}")
        return [Allocation.from_json(a) for a in data["allocations"]], int(data.get("next_policy_id", 1))

    def save(self, allocations: list[Allocation], next_policy_id: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"version": STATE_VERSION, "next_policy_id": next_policy_id,
                "allocations": [a.to_json() for a in allocations]}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".state-")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1)
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def remove(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
