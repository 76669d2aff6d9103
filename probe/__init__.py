"""The probe: the command line, replay, the supervisor and its capture
readers, and the C flow table (flowtable/)."""
