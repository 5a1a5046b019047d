"""cube-master: the cluster brain (gRPC). State in etcd, scheduling, timeouts, reconciliation."""
