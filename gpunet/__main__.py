"""``python -m gpunet`` runs the command line."""

from gpunet.cli import main

main()
