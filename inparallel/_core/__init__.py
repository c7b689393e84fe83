"""The bottom layer: fork, wire format, child bootstrap, supervisor, futures and errors.

Nothing here imports from the layers above.
"""
