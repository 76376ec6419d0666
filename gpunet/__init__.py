"""gpunet: the digit network of the design notes, written once against an array module."""

__version__ = "0.1.0"
