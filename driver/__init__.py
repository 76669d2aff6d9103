"""Capture drivers: capture files now (pcapfile), live rings later."""
