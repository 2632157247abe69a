"""Experiment scripts, each runnable as ``python -m experiments.<name> --help``; see results/README.md."""
