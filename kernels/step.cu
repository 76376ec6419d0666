// The two ends of a training step replayed as a CUDA graph (gpunet/backends/cuda_graph.py).
//
// A captured graph replays its kernels with the arguments they were captured with, so what
// changes from step to step is read from device memory: the step's number k within the epoch,
// one long long that batch_end advances. batch_begin gathers step k's slice of the epoch's
// shuffled order into a fixed index array (what gather_scaled reads) and those samples' labels
// into a fixed labels array; batch_end copies the step's per-sample losses from the fixed array
// the loss kernel writes into the epoch's losses, at the step's place, then advances k.
// The optimizer's per-step numbers (learning rate, Adam's bias corrections) are row k of a table
// the host fills once an epoch (optimizers.cu, the *_update_at kernels).
//
//   order (m,) int64:  | step 0's batch | step 1's batch | ... |      k = *step
//                                        ^ k * batch
//   index (batch,) int64 <- order[k.batch + j];  batch_labels (batch,) int32 <- labels[index[j]]
//   losses (m,) T at [k.batch, k.batch + batch) <- batch_losses (batch,) T
//
// Compiled by NVRTC through cupy.RawModule for T = float and T = double (only batch_end uses T),
// and for the CPU by the test harness (see the head of loss.cu for why the per-item work is a
// __host__ __device__ function and each kernel only a grid-stride loop). Every size is a long
// long (the wrappers pass numpy.int64).

#define GPUNET_GRID_STRIDE(i, n)                                          \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; \
         i < (n); i += (long long)blockDim.x * gridDim.x)

// Sample j of step k's batch: its row in the data set and its label. A place past the epoch's
// m samples (only a partial last batch has one, and that batch runs eagerly) gives row -1, which
// the gather turns into a NaN column, and label -1, which the loss turns into a NaN loss.
__host__ __device__ inline void batch_begin_item(
    const long long* order, const int* labels, long long k, long long j,
    long long* index, int* batch_labels, long long batch, long long m)
{
    const long long place = k * batch + j;
    if (place < 0 || place >= m) {
        index[j] = -1;
        batch_labels[j] = -1;
        return;
    }
    const long long row = order[place];
    index[j] = row;
    batch_labels[j] = labels[row];
}

// order: (m,) the epoch's shuffled rows; labels: the data set's (rows,) int32 labels, indexed
// by row; step: (1,) k; index, batch_labels: (batch,), written.
template <typename T>
__global__ void batch_begin(
    const long long* order, const int* labels, const long long* step,
    long long* index, int* batch_labels, long long batch, long long m)
{
    const long long k = step[0];
    GPUNET_GRID_STRIDE(j, batch) {
        batch_begin_item(order, labels, k, j, index, batch_labels, batch, m);
    }
}

// Step k's losses into the epoch's, then k <- k + 1. One thread does both (the launch is
// <<<1, 1>>>): k may only change after every read of it, and a grid has no barrier. A batch is
// at most a few thousand numbers, a few microseconds for one thread.
template <typename T>
__host__ __device__ inline void batch_end_item(
    const T* batch_losses, T* losses, long long* step, long long batch, long long m)
{
    const long long k = step[0];
    for (long long j = 0; j < batch; ++j) {
        const long long place = k * batch + j;
        if (place >= 0 && place < m) {
            losses[place] = batch_losses[j];
        }
    }
    step[0] = k + 1;
}

// batch_losses: (batch,); losses: (m,), written at step k's place; step: (1,), advanced.
template <typename T>
__global__ void batch_end(
    const T* batch_losses, T* losses, long long* step, long long batch, long long m)
{
    GPUNET_GRID_STRIDE(t, 1) {
        batch_end_item(batch_losses, losses, step, batch, m);
    }
}

#undef GPUNET_GRID_STRIDE
