"""raysv: label-free speaker-recognition training on Ray.

Importing this package does nothing but define names; Ray, torch and faiss are
imported lazily by the modules that need them.
"""

__version__ = "0.1.0"
