"""The guest agent's protocol facts that the host side needs: its ports and protocol level.

The control plane advertises ``ENVD_VERSION`` to the SDKs, which gate features on it (octet-stream
uploads >= 0.5.7, upload metadata >= 0.6.2, watch includeEntry >= 0.6.3, ...); every feature up to
this level is implemented by ``services/envd``.
"""

ENVD_VERSION = "0.6.13"

# envd: Connect-RPC process and filesystem services, /files, /health, /init.
ENVD_PORT = 49983
# The code interpreter: /execute, /contexts.
INTERPRETER_PORT = 49999
