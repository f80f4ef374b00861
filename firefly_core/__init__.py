"""firefly_core: everything firefly does, with no UI code (models, chat, pruning, training).

Heavy libraries (torch, transformers) are imported by the submodules that need them, so
importing this package is cheap.
"""

__version__ = "0.1.0"
