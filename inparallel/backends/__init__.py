"""Engines other than fork: each runs the library's calls somewhere else.

`inparallel.backends.dask` runs them on a Dask cluster (``pip install 'inparallel[dask]'``).
"""
