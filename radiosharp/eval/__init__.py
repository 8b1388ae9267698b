"""Evaluation: probes on frozen features and the MTL gain between runs."""
