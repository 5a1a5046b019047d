"""Generated from protos/envd by scripts/gen_envd_protos.sh; do not edit."""
