"""The package's version is the crate's, and the package ships its type marker."""

from __future__ import annotations

import re
from importlib import metadata, resources

from helpers import REPO

import ringcast


def cargo_version() -> str:
    text = (REPO / "Cargo.toml").read_text(encoding="utf-8")
    package = re.search(r"^\[package\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
    assert package, "Cargo.toml has no [package] table"
    version = re.search(r'^version\s*=\s*"([^"]+)"', package.group(1), re.M)
    assert version, "Cargo.toml's [package] has no version"
    return version.group(1)


def test_version_matches_the_crate() -> None:
    assert ringcast.__version__ == cargo_version()


def test_installed_metadata_matches_the_crate() -> None:
    assert metadata.version("ringcast") == cargo_version()


def test_client_info_names_the_version() -> None:
    from ringcast.client import DEFAULT_CLIENT_INFO
    from ringcast.compat import SEED_CLIENT_INFO

    assert DEFAULT_CLIENT_INFO.endswith(ringcast.__version__)
    assert SEED_CLIENT_INFO.endswith(ringcast.__version__)


def test_package_is_typed() -> None:
    assert resources.files("ringcast").joinpath("py.typed").is_file()
