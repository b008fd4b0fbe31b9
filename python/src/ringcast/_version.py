"""The package version: the same as the ringcast crate's (``Cargo.toml``)."""

__version__ = "0.1.0"
