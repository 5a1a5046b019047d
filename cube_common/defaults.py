"""Where each Cube component listens unless told otherwise: the one source of these numbers.

Every service's settings, the one-node supervisor (``deploy``), ``make env`` and ``cubemastercli``
take their defaults from here, so a client and the server it talks to cannot drift apart. Every
listener defaults to loopback; exposing one is an operator's explicit choice.
"""

ETCD_PORT = 2379
API_PORT = 3000
MASTER_PORT = 50051
CUBELET_PORT = 50052
# The proxy: plain HTTP (E2B_SANDBOX_URL users, node-to-node), HTTPS, its resumer, Envoy's admin.
PROXY_HTTP_PORT = 3002
PROXY_HTTPS_PORT = 443
PROXY_RESUMER_PORT = 3003
ENVOY_ADMIN_PORT = 9901
# Prometheus /metrics of each service (cube_common/metrics.py), one port each so that the services
# of one node never collide; Envoy's own stats are served with the proxy's.
API_METRICS_PORT = 9470
MASTER_METRICS_PORT = 9471
CUBELET_METRICS_PORT = 9472
VS_METRICS_PORT = 9473
PROXY_METRICS_PORT = 9474
# The same, by the services' variable prefix: CUBE_<SERVICE>_METRICS_LISTEN.
METRICS_PORTS = {"API": API_METRICS_PORT, "MASTER": MASTER_METRICS_PORT, "CUBELET": CUBELET_METRICS_PORT,
                 "VS": VS_METRICS_PORT, "PROXY": PROXY_METRICS_PORT}

LOOPBACK = "127.0.0.1"

ETCD_ENDPOINT = f"{LOOPBACK}:{ETCD_PORT}"
API_ADDR = f"{LOOPBACK}:{API_PORT}"
MASTER_ADDR = f"{LOOPBACK}:{MASTER_PORT}"
CUBELET_ADDR = f"{LOOPBACK}:{CUBELET_PORT}"
VS_SOCKET = "/run/cube/vs.sock"
VS_ADDR = f"unix://{VS_SOCKET}"

STATE_DIR = "/var/lib/cube"
ETCD_PREFIX = "/cube"
DOMAIN = "cube.localhost"
