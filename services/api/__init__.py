"""cube-api: the E2B-compatible REST facade (Sanic). Stateless; talks gRPC to the master."""
