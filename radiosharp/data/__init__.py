"""Data sources: each module registers one with ``radiosharp.registry.DATASETS``."""
