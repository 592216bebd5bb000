"""The HTTP edge: one endpoint table (``endpoints``) served by the aiohttp app and the lean front,
codecs. Parses, delegates, serialises."""

from .app import make_app

__all__ = ["make_app"]
