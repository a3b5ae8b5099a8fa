"""Code shared by every dffmpeg part: wire format, request signing, path mapping, config.

This package imports nothing else of ours and nothing heavy, so the drop-in can load it
in a few milliseconds.
"""

__version__ = "0.1.0"
