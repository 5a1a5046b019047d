"""CubeProxy: Envoy as the data plane, configured over ADS by a Python control plane fed from etcd.

See README.md in this directory for the design (routing scheme, xDS resources, the route ack
protocol, TLS files and listeners).
"""
