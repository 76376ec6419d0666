"""numba's compiler for the compiled CPU paths (cpu_fused.py, cpu_layers.py), where numba can be used.

``numba`` is None where it does not import (not installed, or built for another NumPy: its import then
raises), with the reason in ``IMPORT_ERROR``; the NumPy path runs there.

``jit`` caches the machine code on disk where numba finds a folder to write it (beside the source, or
the user's cache folder; NUMBA_CACHE_DIR chooses one). It looks for one when a function is defined, and
where none is writable (a read-only install and no writable home) it raises RuntimeError, which would stop
every CPU run at import: there the functions compile afresh in each process instead.
"""

from __future__ import annotations

try:
    import numba

    IMPORT_ERROR = None
except Exception as error:  # ImportError, or whatever a numba built for another NumPy raises
    numba, IMPORT_ERROR = None, error


def jit(**options):
    """A decorator: ``numba.njit(nogil=True, cache=True, **options)``, uncached where no cache folder is writable."""

    def decorate(function):
        try:
            return numba.njit(nogil=True, cache=True, **options)(function)
        except RuntimeError:  # "cannot cache function ...: no locator available for file ..."
            return numba.njit(nogil=True, **options)(function)

    return decorate
