"""The HTTP edge: aiohttp app factory, route table, codecs. Parses, delegates, serialises."""

from .app import make_app

__all__ = ["make_app"]
