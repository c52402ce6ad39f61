"""One deploy: the saga runner, the context steps share, blue's twin, what may be removed."""
