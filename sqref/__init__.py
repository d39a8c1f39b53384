"""sqref: a NumPy reference implementation of space-efficient CNN quantization.

Public API (see README.md for a tour):
    sqref.load(path, sha256=None) -> Model    read a sqref HDF5 model file (docs/format.md)
    sqref.save(model, path)                   write one atomically
    sqref.run(model, x, return_intermediates=False)
    sqref.ops                                 the forward ops (conv2d, pooling, ...)

These names are imported on first use (PEP 562), so that `import sqref` costs
nothing: the `sqref` command installs its signal handlers before NumPy, SciPy
and h5py load (sqref.__main__).
"""
import importlib

__version__ = "0.1.0"

__all__ = ["Model", "run", "load", "save", "ops", "__version__"]

# public name -> (module, attribute; None: the module itself)
_PUBLIC = {"Model": ("sqref.model", "Model"), "run": ("sqref.model", "run"), "load": ("sqref.fileformat", "load"),
           "save": ("sqref.fileformat", "save"), "ops": ("sqref.ops", None)}


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'sqref' has no attribute {name!r}")
    module, attribute = _PUBLIC[name]
    value = importlib.import_module(module)
    value = value if attribute is None else getattr(value, attribute)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_PUBLIC))
