"""The names of what a deploy measures (``DeployContext.measured``), spelled once.

Steps write them; the timeline, the audit log, the metrics and the reports read them.
"""

BLUE_STOP = "blue_stop_s"
"""Seconds from the switch's start until blue had stopped."""
SWITCH = "switch_s"
"""Seconds from the switch's start until the new production container served."""
TWO_CONTAINERS = "two_containers_s"
"""Seconds green and blue ran side by side."""
DOWNTIME_WINDOW = "downtime_window_s"
"""Seconds between blue's last good answer and the new container's first (restart switch)."""
HANDOFF = "handoff_s"
"""Seconds production's port was redirected to green."""
HANDOFF_REQUESTS = "handoff_requests"
HANDOFF_FAILED_REQUESTS = "handoff_failed_requests"
"""The tool's own client's requests through the redirect, and how many failed."""
GREEN_MEMORY_PEAK = "green_memory_peak_mb"
BLUE_DRAIN = "blue_drain_s"
BLUE_CONNECTIONS_LEFT = "blue_connections_left"
"""Seconds the switch waited for blue's connections to close, and how many were left."""
ROLLBACK_OUTAGE = "rollback_outage_s"
TOTAL = "total_s"
