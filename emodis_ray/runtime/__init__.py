"""Ray at the edges: the session (the one place Ray is started, and the CPU budget), job submission and
telemetry."""
