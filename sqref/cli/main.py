"""The `sqref` command line.

Exit codes: 0 success, 2 bad input or arguments (one line on stderr, no
traceback), 1 an internal failure. With --json, stdout holds exactly one JSON
object, with an "error" field when the command failed.
"""
from __future__ import annotations

import argparse
import json
import sys

from sqref import __version__
from sqref.cli import compress, integer, models, study
from sqref.cli.args import Parser, UsageError, json_default

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="sqref", description="NumPy reference for space-efficient CNN quantization "
                     "(k-bit weights, truncated SVD, dynamic-boundary clipping).")
    parser.add_argument("--version", action="version", version=f"sqref {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    def add(name, help_text):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress output on stderr")
        return p

    for group in (models, compress, integer, study):
        group.register(sub, add)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    want_json = "--json" in argv
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        result = args.func(args)
        if args.json:
            print(json.dumps(result, default=json_default, sort_keys=True))
        return EXIT_OK
    except SystemExit as exc:  # --help / --version
        return int(exc.code or 0)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERNAL, want_json)
    except (UsageError, ValueError, TypeError, FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        return _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, EXIT_USAGE, want_json)
    except MemoryError:
        return _fail("out of memory", EXIT_INTERNAL, want_json)
    except Exception as exc:  # an internal failure: still one line, exit 1
        return _fail(f"internal error: {type(exc).__name__}: {exc}", EXIT_INTERNAL, want_json)


def _fail(message: str, code: int, want_json: bool) -> int:
    print(f"sqref: error: {message}", file=sys.stderr)
    if want_json:
        print(json.dumps({"error": message, "exit_code": code}))
    return code
