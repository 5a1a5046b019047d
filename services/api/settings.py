"""cube-api settings: one typed object from the shared loader (``CUBE_API_*`` plus the shared
``CUBE_MASTER_ADDR``, ``CUBE_DOMAIN``, ``CUBE_AUTH``, ``CUBE_STATE_DIR``, ``CUBE_BUILD_FILES_DIR``, and
flags)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from cube_common import defaults
from cube_common.listen import refuse_public
from cube_common.settings import Settings as _Base, SettingsError, check_listen, setting, shared

E2B_DOMAINS = {"e2b.app", "e2b.dev", "e2b.pro", "e2b-staging.dev", "e2b-tango.dev", "e2b-juliett.dev"}


@dataclass(frozen=True)
class Settings(_Base):
    ENV_PREFIX: ClassVar[str] = "CUBE_API_"
    PROG: ClassVar[str] = "cube-api"
    DESCRIPTION: ClassVar[str] = "Cube's E2B-compatible REST API"

    # Loopback: `make env` points the SDKs at http://127.0.0.1:<port>. Another address needs auth
    # on, or --insecure-public (see validate).
    host: str = setting(defaults.LOOPBACK, "listen address (an address off loopback needs --auth true "
                        "or --insecure-public)")
    port: int = setting(defaults.API_PORT, "listen port")
    master_addr: str = shared.master_addr()
    # Returned as `domain` so the SDK reaches https://<port>-<sandboxID>.<domain> (never one of
    # E2B's own domains).
    domain: str = shared.domain()
    auth: bool = setting(False, "off: any non-empty X-API-KEY is accepted (local use); on: only keys "
                         "issued by `cubemastercli apikey create`", env="CUBE_AUTH")
    create_timeout_s: float = setting(150.0, "deadline of creates and resumes at the master (they wait for a VM)")
    call_timeout_s: float = setting(30.0, "deadline of other calls to the master")
    max_body_bytes: int = setting(1 << 20, "largest request body accepted")
    mtls_dir: Path | None = shared.mtls_dir("the API's TLS directory (tls.crt, tls.key, ca.crt; deploy/pki.py "
                                            "issues it): its calls to the master use mutual TLS. Unset: "
                                            "plaintext, to a master on loopback")
    insecure_public: bool = shared.insecure_public("listen off loopback with auth off: anyone who reaches "
                                                   "the port may then create sandboxes with any key")
    # Build files: the archives the E2B SDK uploads for a template's COPY steps (build_files.py).
    state_dir: Path = shared.state_dir()
    build_files_dir: Path | None = shared.build_files_dir()
    build_file_max_bytes: int = setting(1 << 30, "largest build file (one COPY step's archive) an upload may "
                                        "send or unpack to")
    build_files_team_max_bytes: int = setting(5 << 30, "most bytes of build files one team may keep")
    build_files_ttl_s: float = setting(7 * 86400.0, "a build file neither uploaded nor used for this long is "
                                       "deleted")
    build_file_url_ttl_s: float = setting(3600.0, "how long a signed upload URL stays valid")
    build_file_read_ttl_s: float = setting(86400.0, "how long a node may fetch a COPY step's files after its "
                                           "build started (the URL the build carries)")
    # Volumes' content calls (routes/volumes.py): a PUT of a file streams to the master.
    # A volume's size is the master's (volume_size_mb, 1 GiB by default) and the token does not let
    # the API read it: no file is larger than its filesystem, so this defaults to that size.
    volume_file_max_bytes: int = setting(1 << 30, "largest file one volume content upload may send (keep it at "
                                         "the master's volume_size_mb; a full volume refuses the rest: 429)")
    volume_file_timeout_s: float = setting(3600.0, "deadline of one volume file read or write at the master "
                                           "(the E2B SDK's own file timeout)")
    log_level: str = shared.log_level()
    # Its own listener, not the API port: a scrape carries no X-API-KEY.
    metrics_listen: str = shared.metrics_listen(defaults.API_METRICS_PORT)

    def validate(self) -> Settings:
        if not self.auth:
            refuse_public(self, "host", "auth is off: anyone who reaches it could run code on this node "
                          "with any key", fix="turn auth on (--auth true, keys from `cubemastercli apikey "
                          "create`)")
        check_listen("metrics_listen", self.metrics_listen)
        if not self.domain or self.domain.strip(".") != self.domain:
            raise SettingsError(f"bad domain {self.domain!r}")
        if any(self.domain == d or self.domain.endswith("." + d) for d in E2B_DOMAINS):
            raise SettingsError(f"domain {self.domain!r} is one of E2B's own: the SDK would send traffic there")
        for name in ("build_file_max_bytes", "build_files_team_max_bytes", "build_files_ttl_s",
                     "build_file_url_ttl_s", "build_file_read_ttl_s", "volume_file_max_bytes",
                     "volume_file_timeout_s"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be positive")
        return self

    @property
    def build_files_path(self) -> Path:
        return shared.build_files_path(self.state_dir, self.build_files_dir)
