"""`python -m sqref` and the `sqref` command (setup.cfg's entry point is ``entry``).

SIGINT and SIGTERM are handled from the first instruction: while the command's
modules load (NumPy, SciPy, h5py: most of a second), a signal ends the process
with one line and the shell's exit code (130, 143); nothing has been written yet.
sqref.cli.main then installs the handlers that let every writer clean up.
"""
import os
import signal
import sys


def exit_on_signal(signum, frame):
    # Exit at once (os._exit) rather than raise: an exception raised while an extension module
    # initialises comes out as "ImportError: initialization failed" with a traceback and exit code 1.
    os.write(2, f"sqref: error: interrupted by {signal.Signals(signum).name}\n".encode())
    os._exit(128 + signum)


def entry() -> int:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, exit_on_signal)
    from sqref.cli.main import main  # the heavy imports happen here

    return main()


if __name__ == "__main__":
    sys.exit(entry())
