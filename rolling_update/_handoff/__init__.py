"""The kernel handoff: production's port moved by nftables."""
