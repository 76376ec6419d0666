// Hidden-layer kernels: fused bias add + ReLU (forward) and the ReLU mask (backward).
//
// Compiled by NVRTC through cupy.RawModule for T = float and T = double, and
// for the CPU by the test harness (see the head of loss.cu for why the
// per-item work is a __host__ __device__ function and each kernel only a
// grid-stride loop). Both kernels are elementwise and in place.
//
// Data layout (samples are COLUMNS, as in gpunet/nn/model.py):
//
//            sample j ->                     b (units, 1)
//          +----+----+-- ... --+            +----+
//   unit 0 |    |    |         |            | b0 |
//   unit 1 |    |    |         |            | b1 |
//    ...   |    |    |         |            |    |
//          +----+----+-- ... --+            +----+
//   Z (units, m), C-contiguous: element e = r * m + j is unit r = e / m.
//
// One thread per element e (not per row or column), so consecutive threads
// touch consecutive addresses whatever the shape; b is read by row and stays
// in cache. Every size is a long long (the wrappers pass numpy.int64).

// Grid-stride loop: global thread t handles items t, t + G, t + 2G, ... where
// G is the number of threads in the grid, so any grid size covers any n.
// (#undef at the end of the file: the host harness includes every .cu file
// in one translation unit, and each must run with its own definition.)
#define GPUNET_GRID_STRIDE(i, n)                                          \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; \
         i < (n); i += (long long)blockDim.x * gridDim.x)

// A = relu(z + b) = max(z + b, 0); NaN stays NaN, as with numpy.maximum.
template <typename T>
__host__ __device__ inline T bias_relu_element(T z, T b)
{
    z += b;
    return z < T(0) ? T(0) : z;
}

// Z: (units, m), overwritten with relu(Z + b); b: (units,) (the (units, 1) column).
template <typename T>
__global__ void bias_relu(T* Z, const T* b, long long units, long long m)
{
    GPUNET_GRID_STRIDE(e, units * m) {
        Z[e] = bias_relu_element(Z[e], b[e / m]);
    }
}

// dZ = dA * relu'(Z), with relu'(Z) = [A > 0] read from A = relu(Z). A
// multiply by 1 or 0, as the generic `dA *= A > 0` does, so a NaN or inf in
// dA stays NaN where the mask is 0 (not silently zeroed).
template <typename T>
__host__ __device__ inline T relu_backward_element(T dA, T A)
{
    return dA * (A > T(0) ? T(1) : T(0));
}

// dA, A: the same shape, n elements each, C-contiguous; dA is overwritten.
template <typename T>
__global__ void relu_backward(T* dA, const T* A, long long n)
{
    GPUNET_GRID_STRIDE(e, n) {
        dA[e] = relu_backward_element(dA[e], A[e]);
    }
}

#undef GPUNET_GRID_STRIDE
