"""cube-master settings: one typed object from the shared loader.

Every field has an environment variable ``CUBE_MASTER_<FIELD>`` and a flag; the settings every
Cube service shares also have their short alias (``CUBE_ETCD_ENDPOINTS``, ``CUBE_ETCD_PREFIX``,
and ``CUBE_MASTER_ADDR`` for ``listen``). ``cube-master --help`` lists them all.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from cube_common import defaults
from cube_common.envd import ENVD_VERSION
from cube_common.listen import MTLS_FIX, UNAUTHENTICATED_GRPC, refuse_public
from cube_common.settings import Settings as _Base, SettingsError, check_host_ports, check_listen, setting, shared


def _master_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class Settings(_Base):
    ENV_PREFIX: ClassVar[str] = "CUBE_MASTER_"
    PROG: ClassVar[str] = "cube-master"
    DESCRIPTION: ClassVar[str] = "Cube cluster master (gRPC); run several for a standby"

    listen: str = setting(defaults.MASTER_ADDR, "gRPC listen address (off loopback only with mtls_dir "
                          "or --insecure-public)", env="CUBE_MASTER_ADDR")
    advertise: str = setting("", "the address other components reach this master at (reported in "
                             "<prefix>/leader; default: listen)")
    etcd_endpoints: tuple[str, ...] = shared.etcd_endpoints()
    etcd_prefix: str = shared.etcd_prefix()
    etcd_timeout_s: float = setting(3.0, "per-call etcd deadline: with etcd down, calls fail within this "
                                    "and the API answers 503")
    master_id: str = setting(help="unique name of this master (election candidate id)", factory=_master_id)
    leader_ttl_s: int = setting(4, "leader lease TTL: a dead leader is replaced after at most this long (and a "
                                "standby's next try, a quarter of it)")
    default_template: str = setting("code-interpreter", "template the SDK defaults resolve to",
                                    env="CUBE_DEFAULT_TEMPLATE")
    default_aliases: tuple[str, ...] = setting(("base", "code-interpreter-v1"),
                                               "aliases of the default template (the SDKs' own defaults)")
    max_template_vcpus: int = setting(16, "most vCPUs a template (and so each of its sandboxes) may have")
    max_template_memory_mb: int = setting(32768, "most guest memory a template may have, MiB")
    max_template_disk_mb: int = setting(102400, "largest writable layer a template may have, MiB")
    # Off by default: nodes admit by their measured headroom (services/cubelet/capacity.py), since a
    # clone costs the pages it dirties (~64 MB of a 1 GiB guest in make bench-density), not its size.
    memory_overcommit_ratio: float = setting(0.0, "an operator's hard bound: a node takes sandboxes while the guest "
                                             "memory of those it holds stays within this many times its RAM "
                                             "(0: no bound)")
    placement_attempts: int = setting(3, "how many nodes a create tries, best first, when a node refuses it "
                                      "(full, lacks the template, unreachable)")
    default_timeout_s: int = setting(300, "sandbox lifetime when the client gives none")
    paused_retention_s: float = setting(30 * 86400.0, "a paused sandbox is deleted this long after it was "
                                        "paused (0: kept until killed)")
    max_timeout_s: int = setting(86400, "largest sandbox lifetime accepted")
    max_metadata_entries: int = setting(64, "limit on a sandbox's metadata entries")
    max_metadata_bytes: int = setting(8192, "limit on a sandbox's metadata size")
    max_env_bytes: int = setting(65536, "limit on a sandbox's env vars size")
    # The reconciler leaves transitional records alone until node_op_timeout_s (plus grace) passed.
    node_op_timeout_s: float = setting(120.0, "how long a create, pause or resume may take on the node")
    node_rpc_timeout_s: float = setting(10.0, "deadline of other calls to a node")
    reconcile_grace_s: float = setting(5.0, "grace after node_op_timeout_s before the reconciler acts")
    timeout_tick_s: float = setting(1.0, "how often the leader expires sandboxes")
    reconcile_interval_s: float = setting(15.0, "how often the leader reconciles etcd with the nodes")
    orphan_grace_s: float = setting(60.0, "a VM a node runs but etcd does not know is killed after this")
    lost_check_interval_s: float = setting(1.0, "how often the leader looks for nodes whose registration lapsed "
                                           "(their running sandboxes become lost) or came back")
    lost_retention_s: float = setting(3600.0, "a lost sandbox (its node gone) is deleted this long after it was "
                                      "lost unless its node comes back with it first (0: kept until killed)")
    route_ack_timeout_s: float = setting(10.0, "how long a create waits for the proxies to apply its route "
                                         "before giving up (undo, 503)")
    build_timeout_s: float = setting(3600.0, "a whole template build's deadline on the node")
    build_heartbeat_s: float = setting(5.0, "how often the master running a build refreshes its heartbeat")
    build_progress_write_s: float = setting(0.25, "at most how often a build's progress is written")
    build_stale_s: float = setting(20.0, "the leader fails a build whose heartbeat stopped this long ago")
    build_events_kept: int = setting(200, "how many events a build job keeps")
    build_log_events_kept: int = setting(1000, "how many events a build job with an E2B template definition "
                                         "(steps, start or ready command) keeps: its steps' output lines")
    build_start_timeout_s: float = setting(3600.0, "a deferred build (E2B's two-phase template build) not "
                                           "started within this long of its creation is failed")
    build_retention_s: float = setting(7 * 86400.0, "how long finished build jobs are kept")
    volumes_per_team: int = setting(16, "most volumes a team may have (0: no limit)")
    volume_team_mb: int = setting(16384, "most MiB of volume filesystems a team may have in all (0: no limit)")
    volume_size_mb: int = setting(1024, "filesystem size of each new volume, MiB (its image is sparse)")
    volume_transfer_timeout_s: float = setting(3600.0, "deadline of one volume file read or write "
                                               "relayed to its node")
    envd_version: str = setting(ENVD_VERSION, "envd version reported for templates that do not say theirs")
    mtls_dir: Path | None = shared.mtls_dir()
    insecure_public: bool = shared.insecure_public()
    log_level: str = shared.log_level()
    metrics_listen: str = shared.metrics_listen(defaults.MASTER_METRICS_PORT)
    metrics_refresh_s: float = setting(5.0, "how often the leader counts sandboxes and template builds by state "
                                       "from etcd for /metrics")

    @property
    def prefix(self) -> str:
        return "/" + self.etcd_prefix.strip("/")

    @property
    def advertised(self) -> str:
        return self.advertise or self.listen

    def validate(self) -> Settings:
        if self.mtls_dir is None:
            refuse_public(self, "listen", f"{UNAUTHENTICATED_GRPC} the cluster (API keys, sandboxes, templates)",
                          MTLS_FIX)
        check_host_ports("etcd_endpoints", self.etcd_endpoints)
        check_listen("metrics_listen", self.metrics_listen)
        if self.metrics_refresh_s <= 0:
            raise SettingsError("metrics_refresh_s must be > 0")
        if not (0 < self.default_timeout_s <= self.max_timeout_s):
            raise SettingsError("need 0 < default_timeout_s <= max_timeout_s")
        if not (1 <= self.max_template_vcpus <= 64 and 128 <= self.max_template_memory_mb
                and self.max_template_disk_mb >= 64):
            raise SettingsError("need 1 <= max_template_vcpus <= 64, max_template_memory_mb >= 128 and "
                                "max_template_disk_mb >= 64")
        if self.memory_overcommit_ratio < 0:
            raise SettingsError("memory_overcommit_ratio must be >= 0")
        if not 1 <= self.placement_attempts <= 16:
            raise SettingsError("need 1 <= placement_attempts <= 16")
        if self.paused_retention_s < 0:
            raise SettingsError("paused_retention_s must be >= 0")
        if self.lost_retention_s < 0:
            raise SettingsError("lost_retention_s must be >= 0")
        if self.lost_check_interval_s <= 0:
            raise SettingsError("lost_check_interval_s must be > 0")
        if self.leader_ttl_s < 2:
            raise SettingsError("leader_ttl_s must be >= 2")
        if self.build_stale_s <= self.build_heartbeat_s:
            raise SettingsError("need build_stale_s > build_heartbeat_s")
        if self.build_events_kept < 10 or self.build_log_events_kept < 10:
            raise SettingsError("build_events_kept and build_log_events_kept must be >= 10")
        if self.volumes_per_team < 0 or self.volume_team_mb < 0:
            raise SettingsError("volumes_per_team and volume_team_mb must be >= 0")
        if self.volume_size_mb < 16:
            raise SettingsError("volume_size_mb must be >= 16 (ext4 needs room for its metadata)")
        if self.volume_transfer_timeout_s <= 0:
            raise SettingsError("volume_transfer_timeout_s must be > 0")
        if self.build_start_timeout_s <= 0:
            raise SettingsError("build_start_timeout_s must be > 0")
        return self
