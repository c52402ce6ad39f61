"""Configuration: the TOML file, its models, and the files it names."""
