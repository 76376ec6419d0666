// Input kernels: a batch of uint8 images, gathered by sample number (the
// shuffle), transposed to columns and scaled to [0, 1], in one pass.
//
// Compiled by NVRTC through cupy.RawModule for T = float and T = double, and
// for the CPU by the test harness (see the head of loss.cu for why the
// per-item work is a __host__ __device__ function and each kernel only a
// grid-stride loop).
//
// Data layout: the data set stays on the device as uint8, one sample per ROW;
// the network wants one sample per COLUMN, in T:
//
//   images (rows, features) uint8          A0 (features, batch) T
//          pixel f ->                            sample j ->
//        +----+----+-- ... --+                 +----+----+-- ... --+
//  row 0 |    |    |         |        pixel 0  |    |    |         |
//  row 1 |    |    |         |  ====> pixel 1  |    |    |         |
//   ...  |    |    |         |          ...    |    |    |         |
//        +----+----+-- ... --+                 +----+----+-- ... --+
//
//   A0[f, j] = images[index[j], f] * (1/255), element e = f * batch + j.
//
// One thread per OUTPUT element e, so the writes (4 or 8 bytes each, the
// larger side) are coalesced; the reads are one byte at a stride of a row,
// and a batch's rows stay in cache across the `features` passes over them.
// Every size is a long long (the wrappers pass numpy.int64).

// Grid-stride loop: global thread t handles items t, t + G, t + 2G, ... where
// G is the number of threads in the grid, so any grid size covers any n.
// (#undef at the end of the file: the host harness includes every .cu file
// in one translation unit, and each must run with its own definition.)
#define GPUNET_GRID_STRIDE(i, n)                                          \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; \
         i < (n); i += (long long)blockDim.x * gridDim.x)

// Pixel f of data-set row `row`, as T in [0, 1]: T(pixel) * T(1/255), the
// same two roundings as the generic `batch.T.astype(T) * T(1/255)`. A row
// outside [0, rows) is never read: it gives NaN, so a bad index shows up in
// the loss instead of reading past the data set.
template <typename T>
__host__ __device__ inline T scaled_pixel(
    const unsigned char* images, long long rows, long long features,
    long long row, long long f)
{
    if (row < 0 || row >= rows) {
        return T(nan(""));
    }
    return T(images[row * features + f]) * T(1.0 / 255.0);
}

// images: (rows, features) uint8; index: (batch,) int64 row numbers;
// A0: (features, batch), written.
template <typename T>
__global__ void gather_scaled(
    const unsigned char* images, const long long* index, T* A0,
    long long rows, long long features, long long batch)
{
    GPUNET_GRID_STRIDE(e, features * batch) {
        const long long f = e / batch;
        const long long j = e - f * batch;
        A0[e] = scaled_pixel<T>(images, rows, features, index[j], f);
    }
}

// The whole data set in order (no index): images (rows, features) uint8;
// A0: (features, rows), written.
template <typename T>
__global__ void transpose_scaled(
    const unsigned char* images, T* A0, long long rows, long long features)
{
    GPUNET_GRID_STRIDE(e, features * rows) {
        const long long f = e / rows;
        const long long j = e - f * rows;
        A0[e] = scaled_pixel<T>(images, rows, features, j, f);
    }
}

#undef GPUNET_GRID_STRIDE
