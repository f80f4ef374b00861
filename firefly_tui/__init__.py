"""firefly_tui: the `firefly` command and the Textual app.

Nothing here imports torch or transformers at module import time: the app paints first and loads
heavy things in a worker; CLI subcommands import firefly_core inside their handlers.
"""
