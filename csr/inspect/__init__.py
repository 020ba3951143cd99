"""The run inspector: a static site showing every search tree, pair and evaluation answer of a run."""

from csr.inspect.site import write_site

__all__ = ["write_site"]
