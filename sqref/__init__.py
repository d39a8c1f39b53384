"""sqref: a NumPy reference implementation of space-efficient CNN quantization.

Public API (see README.md for a tour):
    sqref.load(path)          -> Model        read a sqref HDF5 file (format v1)
    sqref.save(model, path)                   write one atomically
    sqref.run(model, x, return_intermediates=False)
    sqref.ops                                 the forward ops (conv2d, pooling, ...)
"""
__version__ = "0.1.0"

from sqref import ops  # noqa: E402
from sqref.model import Model, run  # noqa: E402
from sqref.fileformat import load, save  # noqa: E402

__all__ = ["Model", "run", "load", "save", "ops", "__version__"]
