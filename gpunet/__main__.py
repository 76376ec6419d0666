"""``python -m gpunet`` and the ``gpunet`` command: run the command line."""

import signal
import sys


def run() -> None:
    """The entry point: Ctrl-C while the command line is still importing (NumPy, click) exits quietly too.

    Once the command is over, SIGINT and SIGTERM are ignored to the process's last instruction: at shutdown
    Python puts SIG_DFL back in place of its own handlers (leaving SIG_IGN alone), and a signal then would end a
    run that saved with 130 or 143, which say that nothing was replaced. The exit code is the command's own;
    atexit handlers and the flush of stdout and stderr still run (os._exit would skip them)."""
    try:
        from gpunet.frontends.cli import main
    except KeyboardInterrupt:
        sys.exit(130)
    try:
        main(restore_signals=False)
    finally:
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, signal.SIG_IGN)


if __name__ == "__main__":
    run()
