"""Adversarial suite: hostile requests, payloads and clients against the node and the server."""
