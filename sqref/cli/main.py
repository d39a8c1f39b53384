"""The `sqref` command line.

Exit codes: 0 success, 2 bad input or arguments (one line on stderr, no
traceback), 1 an internal failure or a failure of the environment (disk full,
I/O error, out of memory; one line), 130 interrupted by SIGINT, 143 terminated
by SIGTERM (one line; no output or temporary file is left half-written). With
--json, stdout holds exactly one JSON object, with an "error" field when the
command failed.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys

from sqref import __version__
from sqref.cli import compress, integer, models, study
from sqref.cli.args import Parser, UsageError, json_default
from sqref.hdf5 import WriteError, pinned_sha256
from sqref.jobs.compress import DEFAULT_MODEL

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE = 0, 1, 2
EXIT_SIGINT, EXIT_SIGTERM = 128 + signal.SIGINT, 128 + signal.SIGTERM  # 130, 143, the shell's convention
# Commands that read a sqref file named by a positional argument: --expect-sha256 pins it.
PINNED_INPUT = {"info": "model", "eval": "model", "quantize": "model", "compress": "model", "golden": "model",
                "verify": "golden", "import": "model"}


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived: raised in the main thread, so every atomic writer
    removes its temporary file on the way out."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


def _sha256_arg(text):
    if len(text) != 64 or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise argparse.ArgumentTypeError(f"expected 64 hexadecimal digits (sha256sum's output), got {text!r}")
    return text.lower()


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="sqref", description="NumPy reference for space-efficient CNN quantization "
                     "(k-bit weights, truncated SVD, dynamic-boundary clipping).")
    parser.add_argument("--version", action="version", version=f"sqref {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    def add(name, help_text):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress output on stderr")
        if name in PINNED_INPUT:
            p.add_argument("--expect-sha256", metavar="HEX", type=_sha256_arg,
                           help=f"refuse the {PINNED_INPUT[name]} file unless its SHA-256 (as sha256sum prints it) "
                                "is HEX; the bytes checked are the bytes parsed")
        return p

    for group in (models, compress, integer, study):
        group.register(sub, add)
    return parser


def _pins(args):
    """The --expect-sha256 pin of the command's input file, as a context."""
    expected = getattr(args, "expect_sha256", None)
    if not expected:
        return contextlib.nullcontext()
    path = getattr(args, PINNED_INPUT[args.command], None)
    if path is None and args.command == "compress":
        path = DEFAULT_MODEL
    return pinned_sha256(path, expected)


def main(argv=None) -> int:
    as_program = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    want_json = "--json" in argv
    previous = {}
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, _raise_interrupted)
    except ValueError:  # not the main thread: leave the handlers alone
        previous = {}
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        with _pins(args):
            result = args.func(args)
        if args.json:
            print(json.dumps(result, default=json_default, sort_keys=True))
        return EXIT_OK
    except SystemExit as exc:  # --help / --version
        return int(exc.code or 0)
    except KeyboardInterrupt as exc:  # Interrupted (SIGINT or SIGTERM), or Python's own for SIGINT
        return _fail_interrupted(exc, want_json)
    except WriteError as exc:  # disk full, I/O error: the environment's failure, destination as it was
        return _fail(str(exc.strerror or exc), EXIT_INTERNAL, want_json)
    except (UsageError, ValueError, TypeError, FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        return _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, EXIT_USAGE, want_json)
    except MemoryError:
        return _fail("out of memory", EXIT_INTERNAL, want_json)
    except ImportError as exc:  # an optional dependency is missing (onnx for .onnx models): the environment's
        if isinstance(exc.__cause__, KeyboardInterrupt):  # a signal while an extension module initialised
            return _fail_interrupted(exc.__cause__, want_json)
        return _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, EXIT_INTERNAL, want_json)
    except OSError as exc:
        return _fail(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""), EXIT_INTERNAL, want_json)
    except Exception as exc:  # an internal failure: still one line, exit 1
        first = str(exc).splitlines()[0] if str(exc) else ""
        return _fail(f"internal error: {type(exc).__name__}: {first}", EXIT_INTERNAL, want_json)
    finally:
        for signum, handler in previous.items():
            # As a program, a signal after the command finished is ignored (its exit code
            # stands; no traceback at shutdown); called in-process, the caller's handler returns.
            signal.signal(signum, signal.SIG_IGN if as_program else handler)


def _fail_interrupted(exc, want_json):
    """_fail for an Interrupted (its signal) or a plain KeyboardInterrupt (SIGINT)."""
    if getattr(exc, "signum", None) == signal.SIGTERM:
        return _fail("interrupted by SIGTERM", EXIT_SIGTERM, want_json)
    return _fail("interrupted by SIGINT", EXIT_SIGINT, want_json)


def _fail(message: str, code: int, want_json: bool) -> int:
    print(f"sqref: error: {message}", file=sys.stderr)
    if want_json:
        print(json.dumps({"error": message, "exit_code": code}))
    return code
