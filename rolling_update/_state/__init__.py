"""Durable state of a service's deploys: the lock, the journal, the engine mark."""
