"""The federation's web dashboard: read-only, live (server-sent events), authenticated off loopback."""
