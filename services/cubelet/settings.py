"""Cubelet settings: one typed object from the shared loader (``CUBE_CUBELET_*``, the shared
``CUBE_STATE_DIR``, ``CUBE_NODE_ID``, ``CUBE_ETCD_*``, and flags). ``cube-cubelet --help`` lists
them all."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from cube_common import defaults
from cube_common.listen import MTLS_FIX, UNAUTHENTICATED_GRPC, refuse_public
from cube_common.settings import Settings, SettingsError, check_host_ports, check_listen, setting, shared


@dataclass(frozen=True)
class CubeletSettings(Settings):
    ENV_PREFIX: ClassVar[str] = "CUBE_CUBELET_"
    PROG: ClassVar[str] = "cube-cubelet"
    DESCRIPTION: ClassVar[str] = "Cube node agent (gRPC): sandboxes, templates, warm pool"

    node_id: str = shared.node_id()
    listen: str = setting(defaults.CUBELET_ADDR, "gRPC listen address (off loopback only with mtls_dir "
                          "or --insecure-public)")
    advertise: str = setting("", "the address the master dials (default: listen)")
    etcd_endpoints: tuple[str, ...] = shared.etcd_endpoints()
    etcd_prefix: str = shared.etcd_prefix()
    vs_address: str = setting(defaults.VS_ADDR, "CubeVS's gRPC address")
    # Published in NodeStatus for proxies on other nodes.
    proxy_address: str = setting(f"{defaults.LOOPBACK}:{defaults.PROXY_HTTP_PORT}",
                                 "this node's proxy (plain HTTP)")
    state_dir: Path = shared.state_dir()
    # Each costs an idle VM, and saves its restore and the emulator's warm-up from the create path.
    warm_pool_size: int = setting(2, "pre-restored clones kept ready per template")
    # The pool grows past warm_pool_size with demand (warm_pool.py): a burst of creates finds it
    # deeper, and a quiet template costs warm_pool_size idle VMs again a demand window later.
    warm_pool_max: int = setting(8, "most pre-restored clones kept per template while creates from it come fast")
    warm_pool_grow_idle_pct: float = setting(50.0, "the pool grows past warm_pool_size only while at least this "
                                             "share of the host's CPU is idle (its fills would slow what runs)")
    # Admission is by measured headroom (capacity.py); these are its knobs.
    max_sandboxes: int = setting(0, "the operator's cap on sandboxes running on this node (0: none; the node admits "
                                 "while its measured memory and CPU headroom allow)")
    memory_reserve_mb: int = setting(0, "host memory kept free of sandboxes (0: the larger of 2 GiB and 10 % of the "
                                     "host's memory)")
    sandbox_memory_estimate_mb: int = setting(256, "what one more sandbox is taken to cost in host memory until "
                                              "enough run to measure it")
    cpu_target_pct: float = setting(80.0, "the share of the host's cores idle sandboxes may use together")
    metrics_interval_s: float = setting(5.0, "how often sandbox metrics are sampled")
    metrics_history: int = setting(120, "metric samples kept per sandbox")
    node_lease_ttl_s: int = setting(8, "the node record's lease: a dead or cut-off node's record goes after this "
                                    "(and the master reports its sandboxes lost within a second more)")
    create_timeout_s: float = setting(60.0, "how long a sandbox may take to come up before the create fails")
    max_concurrent_builds: int = setting(2, "template builds run at once")
    probe_timeout_s: float = setting(180.0, "how long a template's own service may take to answer its probe "
                                     "before the build fails")
    # E2B template definitions (services/cubelet/build_steps.py).
    build_files_dir: Path | None = shared.build_files_dir()
    api_url: str = setting(f"http://{defaults.LOOPBACK}:{defaults.API_PORT}",
                           "where this node reaches cube-api for a build's COPY files when its build files "
                           "directory is not the API's (another machine)")
    build_file_max_mb: int = setting(1024, "largest COPY archive this node fetches from the API, MiB (keep it at "
                                     "the API's build_file_max_bytes)")
    step_cache_mb: int = setting(20480, "the template step layer cache's size: least recently used step layers "
                                 "beyond it are evicted, MiB")
    step_timeout_s: float = setting(1800.0, "how long one template build step (RUN, COPY) may run")
    ready_timeout_s: float = setting(300.0, "how long a template's ready command may take to succeed")
    # Template builds from container images (services/cubelet/oci: egress.py, limits.py, cache.py).
    registry_allowlist: tuple[str, ...] = setting(
        (), "registry hosts ('host' or 'host:port', comma-separated) a team's build may pull from although "
        "they resolve to loopback, private, link-local or metadata addresses (an operator's build may pull "
        "from any)")
    plain_http_registries: tuple[str, ...] = setting(
        (), "registry hosts ('host' or 'host:port', comma-separated) every build reaches over plain HTTP "
        "instead of HTTPS (Docker's insecure registries: only registries on networks you trust)")
    image_max_mb: int = setting(16384, "most an image's layers may expand to on disk, MiB")
    layer_max_mb: int = setting(8192, "most one image layer may expand to on disk, MiB")
    image_max_entries: int = setting(1_000_000, "most files (tar entries) an image's layers may hold")
    layer_cache_mb: int = setting(20480, "the layer cache's size: least recently used layers beyond it are "
                                  "evicted (never those of a running build), MiB")
    min_free_disk_mb: int = setting(2048, "below this much free space under state_dir the node takes no new "
                                    "sandbox, resume, template build or template pull (RESOURCE_EXHAUSTED)")
    # A pull outlives the create that started it (the master may give up first): the next create
    # on this node then finds the template (services/cubelet/pull.py).
    template_pull_timeout_s: float = setting(600.0, "how long pulling a template this node lacks from another "
                                             "node may take")
    # A resume of a sandbox paused on another node pulls its saved state first (paused_pull.py):
    # its RAM and disk overlay, within the master's resume deadline as well.
    paused_pull_timeout_s: float = setting(300.0, "how long pulling a paused sandbox's saved state from the node "
                                           "that holds it may take")
    template_prefetch_s: float = setting(10.0, "how often the node looks for templates other nodes hold and it "
                                         "does not, and pulls them ahead of any create (0: only on a create)")
    mtls_dir: Path | None = shared.mtls_dir()
    insecure_public: bool = shared.insecure_public()
    log_level: str = shared.log_level()
    metrics_listen: str = shared.metrics_listen(defaults.CUBELET_METRICS_PORT)

    @property
    def cubelet_dir(self) -> Path:
        return self.state_dir / "cubelet"

    @property
    def templates_dir(self) -> Path:
        return self.cubelet_dir / "templates"

    @property
    def build_files(self) -> Path:
        return shared.build_files_path(self.state_dir, self.build_files_dir)

    @property
    def step_layers_dir(self) -> Path:
        return self.cubelet_dir / "step-layers"

    @property
    def sandboxes_dir(self) -> Path:
        return self.cubelet_dir / "sandboxes"

    @property
    def paused_dir(self) -> Path:
        return self.cubelet_dir / "paused"

    @property
    def advertise_address(self) -> str:
        return self.advertise or self.listen

    def validate(self) -> CubeletSettings:
        if self.mtls_dir is None:
            refuse_public(self, "listen", f"{UNAUTHENTICATED_GRPC} this node (its VMs, their tokens and files)",
                          MTLS_FIX)
        check_host_ports("etcd_endpoints", self.etcd_endpoints)
        check_listen("metrics_listen", self.metrics_listen)
        if not self.api_url.startswith(("http://", "https://")):
            raise SettingsError(f"api_url must be an http:// or https:// URL, not {self.api_url!r}")
        if not self.node_id or "/" in self.node_id:
            raise SettingsError("node_id must be non-empty and contain no '/'")
        for name in ("image_max_mb", "layer_max_mb", "image_max_entries", "layer_cache_mb", "template_pull_timeout_s",
                     "paused_pull_timeout_s"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be positive")
        for name in ("max_sandboxes", "memory_reserve_mb"):
            if getattr(self, name) < 0:
                raise SettingsError(f"{name} must be 0 or more")
        if self.sandbox_memory_estimate_mb <= 0:
            raise SettingsError("sandbox_memory_estimate_mb must be positive")
        if not (0 < self.cpu_target_pct <= 100):
            raise SettingsError("cpu_target_pct must be in (0, 100]")
        from .oci.egress import parse_allowlist  # the one parser of allowlist entries

        for name in ("registry_allowlist", "plain_http_registries"):
            try:
                parse_allowlist(getattr(self, name))
            except ValueError as e:
                raise SettingsError(f"{name}: {e}") from None
        return self
