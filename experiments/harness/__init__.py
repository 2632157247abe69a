"""The experiment harness: the resumable sweep runner, crash-safe storage, run metadata, case descriptors and
report building blocks. Used by the experiments, the asv suite and the tests; never by the library
(``testbed``), which depends on numpy, scipy and numba only.
"""
