"""The package version, in a module of its own so that any module can import it without a cycle."""

__version__ = "0.1.0"
"""The version of bora_ref (the one in ``pyproject.toml``).

Examples:
    >>> from importlib.metadata import version
    >>> import bora_ref
    >>> bora_ref.__version__ == version("bora-ref")
    True
"""
