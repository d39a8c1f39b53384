"""The `sqref` command line: ``main`` (sqref.cli.main) and one module per command group.

    main      the parser and the error contract (exit 0 / 1 internal / 2 bad input)
    args      what the commands share: argument types, output-path checks, tables, JSON
    models    info, eval, import, train, init, data
    compress  quantize, compress
    integer   golden, verify
    study     study
"""
from sqref.cli.main import main

__all__ = ["main"]
