"""``python -m gpunet`` and the ``gpunet`` command: run the command line."""

import sys


def run() -> None:
    """The entry point: Ctrl-C while the command line is still importing (NumPy, click) exits quietly too."""
    try:
        from gpunet.frontends.cli import main
    except KeyboardInterrupt:
        sys.exit(130)
    main(restore_signals=False)


if __name__ == "__main__":
    run()
