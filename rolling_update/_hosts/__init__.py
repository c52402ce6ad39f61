"""Several Docker hosts: their config and transports, and the rollout across them."""
