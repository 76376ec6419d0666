// Max-pooling kernels: forward (the largest entry of each window and which
// entry it is) and backward (each window's gradient routed to that entry).
//
// Compiled by NVRTC through cupy.RawModule for T = float and T = double, and
// for the CPU by the test harness (see the head of loss.cu for why the
// per-item work is a __host__ __device__ function and each kernel only a
// grid-stride loop). The generic code they are tested against is
// gpunet/nn/layers.py's max_pool and max_pool_backward.
//
// Data layout (samples are the LAST axis, as in gpunet/nn/layers.py):
//
//   x, dx (C, H, W, m):              element ((c * H + y) * W + x) * m + s
//   y, dy, argmax (C, H_out, W_out, m), H_out = H / size, W_out = W / size (floored)
//
//   window (c, yo, xo, s) = x[c, yo * size + i, xo * size + j, s] for entry q = i * size + j
//
// The forward pass has one thread per OUTPUT, the backward one per INPUT
// element (which reads its window's argmax): no two threads write one address,
// so no atomics. Consecutive threads are consecutive samples s: coalesced.
// Every size is a long long (the wrappers pass numpy.int64).

// Grid-stride loop: global thread t handles items t, t + G, t + 2G, ... where
// G is the number of threads in the grid, so any grid size covers any n.
// (#undef at the end of the file: the host harness includes every .cu file
// in one translation unit, and each must run with its own definition.)
#define GPUNET_GRID_STRIDE(i, n)                                          \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; \
         i < (n); i += (long long)blockDim.x * gridDim.x)

// Output e = (c, yo, xo, s): its window's largest entry into *y_out and, as
// the return value, which entry: the first equal to it in the order q. A NaN
// in the window makes the maximum NaN (as numpy.maximum; fmax would drop it),
// and no entry equals NaN, so its argmax is the last entry, as the generic
// count of leading unequal entries, capped at size.size - 1, gives.
template <typename T>
__host__ __device__ inline unsigned char max_pool_output(
    const T* x, long long H, long long W, long long m, long long size,
    long long H_out, long long W_out, long long e, T* y_out)
{
    const long long s = e % m;
    long long rest = e / m;
    const long long xo = rest % W_out;
    rest /= W_out;
    const long long yo = rest % H_out;
    const long long c = rest / H_out;
    const T* corner = x + ((c * H + yo * size) * W + xo * size) * m + s;
    T top = corner[0];
    for (long long q = 1; q < size * size; ++q) {
        const T v = corner[((q / size) * W + q % size) * m];
        top = (v > top || isnan(v)) && !isnan(top) ? v : top;
    }
    long long q = 0;
    while (q < size * size - 1 && corner[((q / size) * W + q % size) * m] != top) {
        ++q;
    }
    *y_out = top;
    return (unsigned char)q;
}

// x: (C, H, W, m); y, argmax: (C, H_out, W_out, m), written.
template <typename T>
__global__ void max_pool(
    const T* x, T* y, unsigned char* argmax, long long C, long long H, long long W,
    long long m, long long size, long long H_out, long long W_out)
{
    GPUNET_GRID_STRIDE(e, C * H_out * W_out * m) {
        argmax[e] = max_pool_output(x, H, W, m, size, H_out, W_out, e, &y[e]);
    }
}

// Input element e = (c, y, x, s): its window's dy where it is the window's
// argmax, else 0; 0 too on the rows and columns past the last whole window. A
// multiply by 1 or 0, as the generic code, so a NaN or inf in dy shows.
template <typename T>
__host__ __device__ inline T max_pool_backward_element(
    const T* dy, const unsigned char* argmax, long long H, long long W, long long m,
    long long size, long long H_out, long long W_out, long long e)
{
    const long long s = e % m;
    long long rest = e / m;
    const long long x = rest % W;
    rest /= W;
    const long long y = rest % H;
    const long long c = rest / H;
    const long long yo = y / size, xo = x / size;
    if (yo >= H_out || xo >= W_out) {
        return T(0);
    }
    const long long o = ((c * H_out + yo) * W_out + xo) * m + s;
    const long long q = (y - yo * size) * size + (x - xo * size);
    return dy[o] * (argmax[o] == q ? T(1) : T(0));
}

// dy, argmax: (C, H_out, W_out, m); dx: (C, H, W, m), written.
template <typename T>
__global__ void max_pool_backward(
    const T* dy, const unsigned char* argmax, T* dx, long long C, long long H, long long W,
    long long m, long long size, long long H_out, long long W_out)
{
    GPUNET_GRID_STRIDE(e, C * H * W * m) {
        dx[e] = max_pool_backward_element(dy, argmax, H, W, m, size, H_out, W_out, e);
    }
}

#undef GPUNET_GRID_STRIDE
