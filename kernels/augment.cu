// Augmentation kernel: a batch of uint8 digits, gathered by sample number (the
// shuffle), each drawn through its own affine transform with bilinear
// sampling, scaled to [0, 1] and laid out as columns, in one pass.
//
// Compiled by NVRTC through cupy.RawModule for T = float and T = double, and
// for the CPU by the test harness (see the head of loss.cu for why the
// per-item work is a __host__ __device__ function and each kernel only a
// grid-stride loop). The generic code it is tested against is
// gpunet/nn/augment.py's affine_sample, whose docstring has the formulas.
//
// Data layout: as data.cu's gather_scaled, one thread per OUTPUT element:
//
//   images (rows, side * side) uint8        one digit a row, pixel (y, x) at y * side + x
//   transforms (rows, 6) T                  each digit's inverse map (a, b, c0, d, e, f0)
//   index (batch,) int64                    the batch's row numbers
//   A0 (side * side, batch) T               element e = f * batch + j, f = yo * side + xo
//
//   xs = (a * xo + b * yo) + c0             ys = (d * xo + e * yo) + f0
//   A0[f, j] = bilinear(images[index[j]], ys, xs) * (1/255), 0 outside the digit
//
// Consecutive threads are consecutive samples j of one output pixel: the
// writes are coalesced; the reads gather from each sample's 784 bytes, which
// the batch's transforms scatter. Every size is a long long (the wrappers pass
// numpy.int64).

#define GPUNET_GRID_STRIDE(i, n)                                          \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; \
         i < (n); i += (long long)blockDim.x * gridDim.x)

// A corner's coordinate (a whole number, as T) held to [-1, side]: a corner
// further out reads the zero border as one at -1 or side does. NaN gives -1.
template <typename T>
__host__ __device__ inline long long held_corner(T v, long long side)
{
    if (!(v >= T(-1))) {
        return -1;
    }
    return v > T(side) ? side : (long long)v;
}

// Pixel (y, x) of one digit as T, 0 outside it.
template <typename T>
__host__ __device__ inline T digit_pixel(const unsigned char* digit, long long side, long long y, long long x)
{
    if (y < 0 || y >= side || x < 0 || x >= side) {
        return T(0);
    }
    return T(digit[y * side + x]);
}

// Output pixel (yo, xo) of data-set row `row` drawn through its transform:
// the operations of affine_sample, in its order. A row outside [0, rows)
// gives NaN instead of reading past the data set (as gather_scaled).
template <typename T>
__host__ __device__ inline T affine_pixel(
    const unsigned char* images, const T* transforms, long long rows, long long side,
    long long row, long long yo, long long xo)
{
    if (row < 0 || row >= rows) {
        return T(nan(""));
    }
    const T* t = transforms + row * 6;
    const unsigned char* digit = images + row * side * side;
    const T x = T(xo), y = T(yo);
    const T xs = (t[0] * x + t[1] * y) + t[2];
    const T ys = (t[3] * x + t[4] * y) + t[5];
    const T x0 = floor(xs), y0 = floor(ys);
    const T fx = xs - x0, fy = ys - y0;
    const T gx = T(1) - fx, gy = T(1) - fy;
    const long long ix0 = held_corner(x0, side), ix1 = held_corner(x0 + T(1), side);
    const long long iy0 = held_corner(y0, side), iy1 = held_corner(y0 + T(1), side);
    const T top = gx * digit_pixel<T>(digit, side, iy0, ix0) + fx * digit_pixel<T>(digit, side, iy0, ix1);
    const T bottom = gx * digit_pixel<T>(digit, side, iy1, ix0) + fx * digit_pixel<T>(digit, side, iy1, ix1);
    return (gy * top + fy * bottom) * T(1.0 / 255.0);
}

// images: (rows, side * side) uint8; index: (batch,) int64; transforms: (rows, 6);
// A0: (side * side, batch), written.
template <typename T>
__global__ void affine_augment(
    const unsigned char* images, const long long* index, const T* transforms, T* A0,
    long long rows, long long side, long long batch)
{
    GPUNET_GRID_STRIDE(e, side * side * batch) {
        const long long f = e / batch;
        const long long j = e - f * batch;
        const long long yo = f / side;
        A0[e] = affine_pixel<T>(images, transforms, rows, side, index[j], yo, f - yo * side);
    }
}

#undef GPUNET_GRID_STRIDE
