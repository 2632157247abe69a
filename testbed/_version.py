"""The version of the testbed, in a module of its own so that any module can read it without importing the
package (whose ``__init__`` imports every layer)."""

__version__ = "0.1.0"
