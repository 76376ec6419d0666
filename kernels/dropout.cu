// Dropout's mask: element n is 0 (dropped) or 1/(1 - p) (kept), drawn from a
// counter-based hash of (key, n), so that no random state lives on the device
// and the GPU draws exactly the CPU's mask.
//
// Compiled by NVRTC through cupy.RawModule for T = float and T = double, and
// for the CPU by the test harness (see the head of loss.cu for why the
// per-item work is a __host__ __device__ function and each kernel only a
// grid-stride loop). The generic code it is tested against, bit for bit, is
// gpunet/nn/layers.py's dropout_mask: integer arithmetic modulo 2^64 and one
// choice between two numbers computed on the host.
//
// The mask is (units, k) in C order (any leading axes flattened into units),
// for k samples of a step's batch from sample `first` on. Element e = u * k + s
// (unit u, sample s) draws the stream's number n = (first + s) * units + u:
// numbered sample by sample within the whole batch, so a chunk of the batch
// draws exactly the whole batch's columns, however the batch is split. The
// mask is written C-contiguous: one thread per element, coalesced. Every size
// is a long long (the wrappers pass numpy.int64; the key and threshold
// numpy.uint64).

// Grid-stride loop: global thread t handles items t, t + G, t + 2G, ... where
// G is the number of threads in the grid, so any grid size covers any n.
// (#undef at the end of the file: the host harness includes every .cu file
// in one translation unit, and each must run with its own definition.)
#define GPUNET_GRID_STRIDE(i, n)                                          \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; \
         i < (n); i += (long long)blockDim.x * gridDim.x)

// SplitMix64's finalizer (layers.mix64), unsigned arithmetic wrapping modulo 2^64.
__host__ __device__ inline unsigned long long mix64(unsigned long long z)
{
    z ^= z >> 30;
    z *= 0xBF58476D1CE4E5B9ULL;
    z ^= z >> 27;
    z *= 0x94D049BB133111EBULL;
    z ^= z >> 31;
    return z;
}

// SplitMix64's n-th output (n from 0) from state `key`: mix64(key + (n + 1) * GOLDEN)
// (Steele, Lea and Flood, 2014; layers.splitmix64).
__host__ __device__ inline unsigned long long splitmix64_output(unsigned long long key, long long n)
{
    return mix64(key + ((unsigned long long)n + 1ULL) * 0x9E3779B97F4A7C15ULL);
}

// Element n of the mask: kept where the output's top 32 bits are at least
// `threshold` (round(p . 2^32)), so dropped with probability p.
template <typename T>
__host__ __device__ inline T dropout_element(
    unsigned long long key, unsigned long long threshold, T scale, long long n)
{
    return (splitmix64_output(key, n) >> 32) >= threshold ? scale : T(0);
}

// Element e's number in the stream: unit u = e / k, sample s = e % k of the
// chunk, n = (first + s) * units + u.
__host__ __device__ inline long long dropout_counter(long long e, long long units, long long k, long long first)
{
    return (first + e % k) * units + e / k;
}

// mask: units * k elements, written; key: layers.dropout_key(seed, step);
// scale: T(1/(1 - p)); first: the chunk's first sample within the step's batch.
template <typename T>
__global__ void dropout_mask(
    T* mask, unsigned long long key, unsigned long long threshold, T scale,
    long long units, long long k, long long first)
{
    GPUNET_GRID_STRIDE(e, units * k) {
        mask[e] = dropout_element(key, threshold, scale, dropout_counter(e, units, k, first));
    }
}

// The same mask with the run's step number read from device memory, for a step replayed as a CUDA
// graph (kernels/step.cu): step first_step[0] + step[0] (the epoch's first, set once an epoch, and
// the step's number within it, advanced by batch_end), so the key is layers.dropout_key(seed, that)
// = mix64(seed_state + step), seed_state = layers.dropout_seed_state(seed), computed on the host.
template <typename T>
__global__ void dropout_mask_at(
    T* mask, unsigned long long seed_state, const long long* first_step, const long long* step,
    unsigned long long threshold, T scale, long long units, long long k, long long first)
{
    const unsigned long long key = mix64(seed_state + (unsigned long long)(first_step[0] + step[0]));
    GPUNET_GRID_STRIDE(e, units * k) {
        mask[e] = dropout_element(key, threshold, scale, dropout_counter(e, units, k, first));
    }
}

#undef GPUNET_GRID_STRIDE
