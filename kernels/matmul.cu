// Small matrix products without cuBLAS: C = A . B, one thread per element of C.
//
// Why: CuPy refuses every cuBLAS call while a stream is captured (cupy_backends/cuda/libs/cublas.pyx,
// setStream), so a training step whose products go to cuBLAS cannot be one CUDA graph. The notes'
// network multiplies at most 16 x 784 by 784 x 64 in a step (a few hundred thousand multiply-adds), too
// little for cuBLAS's tiling to matter; tiny-cuda-nn runs such products in its own kernels too. The
// backend uses this kernel for products up to kernels.SMALL_PRODUCT multiply-adds while --cuda-graph is on
// (gpunet/backends/cuda.py), and cuBLAS otherwise.
//
// Compiled at run time by NVRTC (gpunet/backends/kernels.py) for T = float and double, and walked on the
// CPU thread by thread by tests/kernel_host/walk.cpp (see loss.cu's header for the pattern).
//
// Layout: C (M, N) C-contiguous. A (M, K) and B (K, N) are read through strides in elements, so a
// transposed view is no copy: element (i, p) of A is A[i * a_row + p * a_col]. The backward pass's
// products are NN (Z = W.A), NT (dW = dZ.A^T) and TN (dA = W^T.dZ); every combination works.
//
// Accumulation: in T, p = 0, 1, ..., K-1 in that order, each step one fused multiply-add (fma: one
// rounding, on the GPU and in the host walk alike), so a product's bits do not depend on the launch
// shape, the device or the thread order: an eager step and its replayed graph give the same bits.
// Against NumPy's (BLAS's) product, which adds in its own order, the two agree within the bound of a
// sum of K products (tests/tolerances.py). One exception: CuPy compiles with -ftz=true, so in float
// a subnormal term or sum (below 1.2e-38) is flushed to zero on the GPU and not in the host walk.

#define GPUNET_GRID_STRIDE(i, n)                                          \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; \
         i < (n); i += (long long)blockDim.x * gridDim.x)

// C[i, j] = sum_p A[i, p] . B[p, j]: element e = i * N + j.
template <typename T>
__host__ __device__ inline T matmul_element(
    const T* A, const T* B, long long N, long long K,
    long long a_row, long long a_col, long long b_row, long long b_col, long long e)
{
    const long long i = e / N, j = e % N;
    const T* a = A + i * a_row;
    const T* b = B + j * b_col;
    T sum = T(0);
    for (long long p = 0; p < K; ++p) {
        sum = fma(a[p * a_col], b[p * b_row], sum);
    }
    return sum;
}

// A, B: read through their strides; C: (M, N), C-contiguous, not overlapping A or B.
template <typename T>
__global__ void matmul(
    const T* A, const T* B, T* C, long long M, long long N, long long K,
    long long a_row, long long a_col, long long b_row, long long b_col)
{
    GPUNET_GRID_STRIDE(e, M * N) {
        C[e] = matmul_element(A, B, N, K, a_row, a_col, b_row, b_col, e);
    }
}

#undef GPUNET_GRID_STRIDE
