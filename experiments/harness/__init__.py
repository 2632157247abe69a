"""The experiment harness: one cell and its row (cells), the resumable sweep runner and where it runs cells
(here, or on Dask distributed: executors, dask_worker), crash-safe storage, run metadata, case descriptors and
report building blocks. Used by the experiments, the asv suite and the tests; never by the library
(``testbed``), which depends on numpy, scipy and numba only. Its layers are contracts in pyproject.toml.
"""
