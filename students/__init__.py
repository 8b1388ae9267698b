"""Plug-in package: every module here registers its builders by name.

The core finds them through `radiosharp.registry`; adding one is adding a file.
"""
