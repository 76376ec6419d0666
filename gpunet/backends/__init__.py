"""Where the arithmetic runs: NumPy on the CPU (optionally compiled with numba), CuPy with CUDA kernels on a GPU."""
