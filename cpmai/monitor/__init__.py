"""Monitoring: reading what a server logged, judging it against the reference data and the
manifest's bounds, and firing improvement triggers (`cpmai monitor`)."""
