"""The probe: CLI, replay and capture readers, the C flow table (flowtable/),
logging and named exit codes."""
