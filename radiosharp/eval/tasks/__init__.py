"""Eval tasks: each module registers one with ``radiosharp.registry.TASKS``."""
