"""The envd protocol level this agent implements, as the control plane advertises it."""

# The SDKs gate features on this (octet-stream uploads >= 0.5.7, upload metadata >= 0.6.2,
# watch includeEntry >= 0.6.3, ...); every feature up to this level is implemented.
ENVD_VERSION = "0.6.13"
