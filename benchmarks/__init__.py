"""Benchmarks: inparallel side by side with a hand-written fork floor and its peers.

Run ``python -m benchmarks.run`` from the repository root; see ``benchmarks/README.rst``.
"""
