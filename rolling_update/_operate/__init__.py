"""Operating commands: status, history, plan, rollback, recover, init, demo."""
