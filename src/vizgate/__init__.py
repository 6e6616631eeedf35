"""vizgate: a web gateway for remote visualization sessions."""

__all__ = ["__version__"]

__version__ = "0.1.0"
