"""The SDK's tests run against the control-plane suite's real cluster (etcd, a cube-master process,
a fake node): its fixtures are shared from tests/control/conftest.py rather than copied."""

from tests.control.conftest import cluster, fresh  # noqa: F401  (pytest finds fixtures by name)
