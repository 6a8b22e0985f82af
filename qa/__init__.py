"""Retrieval-augmented question answering over news articles.

The flow is visible in the module names: corpus -> passages -> embedding -> store/index ->
retriever -> reader -> pipeline -> service (and cli for the `qa` command).
"""

__version__ = "0.1.0"
