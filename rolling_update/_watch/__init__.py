"""Probes and waits: HTTP probes with pure judges, and containers watched while a wait runs."""
