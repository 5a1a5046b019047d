"""What every Cube component shares: settings loading, well-known ports and addresses, the etcd
client and key layout, the route-ack protocol, the envd protocol level, and small process and
network-namespace helpers.

Invariants:
- This package is the bottom of the dependency graph. It imports the standard library and
  third-party packages only, never ``services``, ``vmm_core``, ``sdk`` or ``deploy``: everything
  may import it, it imports none of them.
- Each fact lives here once (a port, a key's shape, the envd version). A second definition of one
  elsewhere in the tree is a bug.
- The guest agent (``services/envd``) runs inside sandboxes and imports this package too, so its
  modules that envd uses (``settings``, ``envd``) stay standard-library only.
"""
