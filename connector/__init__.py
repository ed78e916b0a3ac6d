"""omnisend-connector: keeps Omnisend contacts and segment tags in sync with segment events."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("omnisend-connector")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
