// Convolution kernels: im2col (the patches of maps as columns) and col2im (its gradient, as a gather).
//
// Compiled by NVRTC through cupy.RawModule for T = float and T = double, and
// for the CPU by the test harness (see the head of loss.cu for why the
// per-item work is a __host__ __device__ function and each kernel only a
// grid-stride loop). The generic code they are tested against is
// gpunet/nn/layers.py's im2col and col2im.
//
// Data layout (samples are the LAST axis, as in gpunet/nn/layers.py):
//
//   x (C, H, W, m) maps:                 element ((c * H + y) * W + x) * m + s
//   columns (C.k.k, H_out.W_out.m):      entry [c, i, j, yo, xo, s] at
//                                        ((((c * k + i) * k + j) * H_out + yo) * W_out + xo) * m + s
//
//   columns[c, i, j, yo, xo, s] = x[c, yo + i - pad, xo + j - pad, s]  (0 outside the maps)
//
// with `pad` rows and columns of zeros before each map (and H_out, W_out
// saying how many after). One thread per COLUMN entry in im2col and per INPUT
// element in col2im: consecutive threads are consecutive samples s, so both
// reads and writes are coalesced, and no two threads write one address (no
// atomics). Every size is a long long (the wrappers pass numpy.int64).

// Grid-stride loop: global thread t handles items t, t + G, t + 2G, ... where
// G is the number of threads in the grid, so any grid size covers any n.
// (#undef at the end of the file: the host harness includes every .cu file
// in one translation unit, and each must run with its own definition.)
#define GPUNET_GRID_STRIDE(i, n)                                          \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; \
         i < (n); i += (long long)blockDim.x * gridDim.x)

// Column entry e: the map element it copies, or 0 in the padding.
template <typename T>
__host__ __device__ inline T im2col_entry(
    const T* x, long long H, long long W, long long m, long long k, long long pad,
    long long H_out, long long W_out, long long e)
{
    const long long s = e % m;
    long long rest = e / m;
    const long long xo = rest % W_out;
    rest /= W_out;
    const long long yo = rest % H_out;
    rest /= H_out;
    const long long j = rest % k;
    rest /= k;
    const long long i = rest % k;
    const long long c = rest / k;
    const long long y = yo + i - pad, xx = xo + j - pad;
    if (y < 0 || y >= H || xx < 0 || xx >= W) {
        return T(0);
    }
    return x[((c * H + y) * W + xx) * m + s];
}

// x: (C, H, W, m); columns: (C.k.k, H_out.W_out.m), written.
template <typename T>
__global__ void im2col(
    const T* x, T* columns, long long C, long long H, long long W, long long m,
    long long k, long long pad, long long H_out, long long W_out)
{
    GPUNET_GRID_STRIDE(e, C * k * k * H_out * W_out * m) {
        columns[e] = im2col_entry(x, H, W, m, k, pad, H_out, W_out, e);
    }
}

// Input element e = (c, y, x, s) of dx: the sum of the column entries that
// copied it, [c, i, j, y + pad - i, x + pad - j, s] for every kernel offset
// (i, j) whose position exists, added in ascending (i, j) order starting from
// 0: the order of the generic col2im's k.k shifted-slice additions, so the
// same roundings and the same bits.
template <typename T>
__host__ __device__ inline T col2im_element(
    const T* columns, long long H, long long W, long long m, long long k, long long pad,
    long long H_out, long long W_out, long long e)
{
    const long long s = e % m;
    long long rest = e / m;
    const long long xp = rest % W + pad;  // in padded coordinates
    rest /= W;
    const long long yp = rest % H + pad;
    const long long c = rest / H;
    T sum = T(0);
    for (long long i = 0; i < k; ++i) {
        const long long yo = yp - i;
        if (yo < 0 || yo >= H_out) {
            continue;
        }
        for (long long j = 0; j < k; ++j) {
            const long long xo = xp - j;
            if (xo < 0 || xo >= W_out) {
                continue;
            }
            sum += columns[((((c * k + i) * k + j) * H_out + yo) * W_out + xo) * m + s];
        }
    }
    return sum;
}

// columns: (C.k.k, H_out.W_out.m); dx: (C, H, W, m), written.
template <typename T>
__global__ void col2im(
    const T* columns, T* dx, long long C, long long H, long long W, long long m,
    long long k, long long pad, long long H_out, long long W_out)
{
    GPUNET_GRID_STRIDE(e, C * H * W * m) {
        dx[e] = col2im_element(columns, H, W, m, k, pad, H_out, W_out, e);
    }
}

#undef GPUNET_GRID_STRIDE
