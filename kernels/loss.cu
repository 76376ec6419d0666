// Output-layer kernels: fused softmax + cross-entropy, and the accuracy count.
//
// Compiled at run time by NVRTC through cupy.RawModule (gpunet/backends/kernels.py),
// once per process, for T = float and T = double (name_expressions
// "softmax_cross_entropy<float>", ...). No #include: NVRTC has no host
// headers, and the same file is compiled for the CPU by the test harness
// (tests/kernel_host/walk.cpp with kernels/host_compat.h), which walks the
// grid thread by thread. So each kernel's per-thread work is a
// __host__ __device__ function, and each __global__ kernel is only a
// grid-stride loop around it: no shared memory, no __syncthreads, no warp
// shuffles, nothing a sequential walk could get wrong.
//
// Data layout (samples are COLUMNS, as in gpunet/nn/model.py):
//
//            sample i ->
//          +----+----+----+-- ... --+
//  class 0 | Z0 | Z1 | Z2 |         |   Z (classes, m), C-contiguous:
//  class 1 |    |    |    |         |   Z[c, i] is at Z[c * m + i]
//    ...   |    |    |    |         |
//  class 9 |    |    |    |         |   labels (m,) int32, losses (m,)
//          +----+----+----+-- ... --+
//            ^ thread i walks this column (stride m)
//
// One thread per sample. Neighbouring threads read neighbouring addresses of
// each row, so every row read is coalesced; a column is only `classes` (10)
// values, so a thread's loop is short and there is no reduction across threads.
//
// Every size is a long long (the Python wrappers pass numpy.int64).

// Grid-stride loop: global thread t handles items t, t + G, t + 2G, ... where
// G is the number of threads in the grid, so any grid size covers any n.
// (#undef at the end of the file: the host harness includes every .cu file
// in one translation unit, and each must run with its own definition.)
#define GPUNET_GRID_STRIDE(i, n)                                          \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; \
         i < (n); i += (long long)blockDim.x * gridDim.x)

// ---------------------------------------------------------------------------
// Fused softmax + cross-entropy, forward and backward, for sample i:
//
//     zmax   = max_c Z[c, i]
//     logsum = log sum_c exp(Z[c, i] - zmax)
//     logp_c = Z[c, i] - zmax - logsum                 (log softmax, finite)
//     loss_i = -logp_label
//     dZ[c, i] = (exp(logp_c) - [c == label]) * (1/m)
//
// the same operations, in the same order and precision T, as the generic
// gpunet.nn.loss.softmax_cross_entropy (the reference this is tested against).
// No one-hot matrix and no softmax array: "- onehot" subtracts 1 at the label.
// A label outside [0, classes) is never used as an index: that sample's loss
// is NaN (so the error shows in the reported loss) and its dZ is softmax / m.
template <typename T>
__host__ __device__ inline void softmax_cross_entropy_sample(
    const T* Z, const int* labels, T* dZ, T* losses,
    long long classes, long long m, long long i)
{
    const int label = labels[i];
    T zmax = Z[i];
    for (long long c = 1; c < classes; ++c) {
        const T z = Z[c * m + i];
        zmax = z > zmax ? z : zmax;
    }
    T sum = T(0);
    for (long long c = 0; c < classes; ++c) {
        sum += exp(Z[c * m + i] - zmax);
    }
    const T logsum = log(sum);
    const T inv_m = T(1.0 / (double)m);
    const bool valid = label >= 0 && label < classes;
    losses[i] = valid ? -((Z[label * m + i] - zmax) - logsum) : T(nan(""));
    for (long long c = 0; c < classes; ++c) {
        T p = exp((Z[c * m + i] - zmax) - logsum);
        if (c == label) {
            p -= T(1);
        }
        dZ[c * m + i] = p * inv_m;
    }
}

// Z, dZ: (classes, m); labels, losses: (m,). One grid-stride item per sample.
template <typename T>
__global__ void softmax_cross_entropy(
    const T* Z, const int* labels, T* dZ, T* losses,
    long long classes, long long m)
{
    GPUNET_GRID_STRIDE(i, m) {
        softmax_cross_entropy_sample(Z, labels, dZ, losses, classes, m, i);
    }
}

// ---------------------------------------------------------------------------
// Accuracy: is the largest logit of sample i at its label? (1 or 0)
// The first largest wins, and NaN counts as largest, as numpy.argmax does.
template <typename T>
__host__ __device__ inline int correct_sample(
    const T* Z, const int* labels, long long classes, long long m, long long i)
{
    long long best = 0;
    T top = Z[i];
    for (long long c = 1; c < classes && !isnan(top); ++c) {
        const T z = Z[c * m + i];
        if (z > top || isnan(z)) {
            top = z;
            best = c;
        }
    }
    return best == labels[i] ? 1 : 0;
}

// Z: (classes, m); labels: (m,); count: one int, zeroed by the caller.
// Each thread counts its samples and adds its total once, so there is one
// atomicAdd per thread, not per sample.
template <typename T>
__global__ void count_correct(
    const T* Z, const int* labels, int* count, long long classes, long long m)
{
    int mine = 0;
    GPUNET_GRID_STRIDE(i, m) {
        mine += correct_sample(Z, labels, classes, m, i);
    }
    if (mine != 0) {
        atomicAdd(count, mine);
    }
}

// ---------------------------------------------------------------------------
// The output layer's end of a training step in one kernel, for sample i:
//
//     Z[c, i] += b[c]                       (Z_L = W_L.A + b_L: the bias add, written back)
//     count   += [argmax_c Z[c, i] == label]  (correct_sample, as count_correct)
//     dZ, loss_i                             (softmax_cross_entropy_sample)
//
// each on the biased column, so the same operations as the bias add, count_correct and
// softmax_cross_entropy launched one after the other. A thread reads and writes only its own
// samples' columns. count: one int, added to (the epoch's counter, zeroed once an epoch).
template <typename T>
__global__ void softmax_cross_entropy_counted(
    T* Z, const T* b, const int* labels, T* dZ, T* losses, int* count, long long classes, long long m)
{
    int mine = 0;
    GPUNET_GRID_STRIDE(i, m) {
        for (long long c = 0; c < classes; ++c) {
            Z[c * m + i] += b[c];
        }
        mine += correct_sample(Z, labels, classes, m, i);
        softmax_cross_entropy_sample(Z, labels, dZ, losses, classes, m, i);
    }
    if (mine != 0) {
        atomicAdd(count, mine);
    }
}

#undef GPUNET_GRID_STRIDE
