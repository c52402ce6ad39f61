"""What the tool tells: logs, live waits, the timeline, the audit log, metrics."""
