"""The Docker seam: specs, the engine protocol, the aiodocker adapter, registry, build context."""
