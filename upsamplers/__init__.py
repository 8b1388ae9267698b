"""Plug-in package: every module here registers its builders by name.

The core finds them through `radiosharp.registry`; adding one is adding a file.
"""

# attaches ``bounded_forward`` (bounded-memory execution) to every upsampler
from upsamplers import _chunked  # noqa: E402, F401
