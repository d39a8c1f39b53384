"""`python -m sqref` and the `sqref` command (setup.cfg's entry point is ``entry``).

SIGINT and SIGTERM are handled from the first instruction: while the command's
modules load (NumPy, SciPy, h5py: most of a second), a signal ends the process
with one line and the shell's exit code (130, 143); nothing has been written yet.
sqref.cli.main then installs the handlers that let every writer clean up.
"""
import signal
import sys


def _before_main(signum, frame):
    sys.stderr.write(f"sqref: error: interrupted by {signal.Signals(signum).name}\n")
    raise SystemExit(128 + signum)


def entry() -> int:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _before_main)
    from sqref.cli.main import main  # the heavy imports happen here

    return main()


if __name__ == "__main__":
    sys.exit(entry())
