"""The asyncio layer's private modules; the public names are re-exported by `inparallel.aio`."""
