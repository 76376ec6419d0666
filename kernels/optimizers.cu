// The optimizers' whole update as one kernel over the parameters: weight decay, moments, bias
// corrections and the parameter change, one thread per parameter.
//
// Compiled by NVRTC through cupy.RawModule for T = float and T = double, and for the CPU by the
// test harness (see the head of loss.cu for why the per-item work is a __host__ __device__
// function and each kernel only a grid-stride loop). The generic code these are tested against is
// gpunet/nn/optimizers.py: the same operations on each element, in the same order and precision T.
//
// Data layout: a network's parameters are one flat array, all weights, then all biases
// (gpunet/nn/model.py, FlatParameters); the optimizers hold them as two groups, and decay only the
// first. A launch covers both groups: element e < n_w is weight e, element e >= n_w is bias e - n_w.
//
//   e:   0 ........... n_w - 1 | n_w ......... n_w + n_b - 1
//        w, dw, m_w, s_w       | b, db, m_b, s_b            (each group's arrays, C-contiguous)
//
// The state (Adam's mean m and square s, momentum's velocity v) has each group's shape. Every
// element is independent: no thread reads another's element. Every size is a long long (the
// wrappers pass numpy.int64), every scalar a T (numpy's dtype.type, rounded on the host as the
// generic code rounds it).

// Grid-stride loop: global thread t handles items t, t + G, t + 2G, ... where
// G is the number of threads in the grid, so any grid size covers any n.
// (#undef at the end of the file: the host harness includes every .cu file
// in one translation unit, and each must run with its own definition.)
#define GPUNET_GRID_STRIDE(i, n)                                          \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; \
         i < (n); i += (long long)blockDim.x * gridDim.x)

// Gradient descent (sgd, gd): p <- p.decay; p <- p - alpha.g. `decay` is T(1 - alpha.lambda) for
// the weights (GradientDescent.decay_weights); the biases are not decayed.
template <typename T>
__host__ __device__ inline void sgd_element(T& p, T g, T decay, bool decayed, T lr)
{
    if (decayed) {
        p *= decay;
    }
    const T step = g * lr;
    p -= step;
}

// Momentum (heavy ball): p <- p.decay; v <- beta.v + g; p <- p - alpha.v.
template <typename T>
__host__ __device__ inline void momentum_element(T& p, T g, T& v, T decay, bool decayed, T lr, T beta)
{
    if (decayed) {
        p *= decay;
    }
    v *= beta;
    v += g;
    const T step = v * lr;
    p -= step;
}

// Adam with both bias corrections folded into step_size = alpha.sqrt(1 - beta2^t)/(1 - beta1^t):
//   p <- p.decay;  m <- beta1.m + (1 - beta1).g;  s <- beta2.s + ((1 - beta2).g).g
//   p <- p - (step_size.m) / (sqrt(s) + eps)
template <typename T>
__host__ __device__ inline void adam_element(
    T& p, T g, T& m, T& s, T decay, bool decayed,
    T beta1, T one_minus_beta1, T beta2, T one_minus_beta2, T step_size, T eps)
{
    if (decayed) {
        p *= decay;
    }
    m *= beta1;
    m += g * one_minus_beta1;
    s *= beta2;
    T square = g * one_minus_beta2;
    square *= g;
    s += square;
    T root = sqrt(s);
    root += eps;
    T step = m * step_size;
    step /= root;
    p -= step;
}

template <typename T>
__global__ void sgd_update(
    T* w, const T* dw, long long n_w, T* b, const T* db, long long n_b, T decay, T lr)
{
    GPUNET_GRID_STRIDE(e, n_w + n_b) {
        if (e < n_w) {
            sgd_element(w[e], dw[e], decay, true, lr);
        } else {
            sgd_element(b[e - n_w], db[e - n_w], decay, false, lr);
        }
    }
}

template <typename T>
__global__ void momentum_update(
    T* w, const T* dw, T* v_w, long long n_w, T* b, const T* db, T* v_b, long long n_b,
    T decay, T lr, T beta)
{
    GPUNET_GRID_STRIDE(e, n_w + n_b) {
        if (e < n_w) {
            momentum_element(w[e], dw[e], v_w[e], decay, true, lr, beta);
        } else {
            const long long i = e - n_w;
            momentum_element(b[i], db[i], v_b[i], decay, false, lr, beta);
        }
    }
}

template <typename T>
__global__ void adam_update(
    T* w, const T* dw, T* m_w, T* s_w, long long n_w, T* b, const T* db, T* m_b, T* s_b, long long n_b,
    T decay, T beta1, T one_minus_beta1, T beta2, T one_minus_beta2, T step_size, T eps)
{
    GPUNET_GRID_STRIDE(e, n_w + n_b) {
        if (e < n_w) {
            adam_element(w[e], dw[e], m_w[e], s_w[e], decay, true,
                         beta1, one_minus_beta1, beta2, one_minus_beta2, step_size, eps);
        } else {
            const long long i = e - n_w;
            adam_element(b[i], db[i], m_b[i], s_b[i], decay, false,
                         beta1, one_minus_beta1, beta2, one_minus_beta2, step_size, eps);
        }
    }
}

// The same updates with their per-step numbers read from device memory: row *step of `table`,
// which the host fills once an epoch with each step's numbers, rounded to T as the kernels above
// get them (kernels.update_scalars). What a CUDA graph replays (kernels/step.cu): one captured
// launch serves every step. The rows: sgd (decay, lr); momentum (decay, lr, beta);
// adam (decay, beta1, 1 - beta1, beta2, 1 - beta2, step_size, eps).
template <typename T>
__global__ void sgd_update_at(
    T* w, const T* dw, long long n_w, T* b, const T* db, long long n_b, const T* table, const long long* step)
{
    const T* s = table + step[0] * 2;
    GPUNET_GRID_STRIDE(e, n_w + n_b) {
        if (e < n_w) {
            sgd_element(w[e], dw[e], s[0], true, s[1]);
        } else {
            sgd_element(b[e - n_w], db[e - n_w], s[0], false, s[1]);
        }
    }
}

template <typename T>
__global__ void momentum_update_at(
    T* w, const T* dw, T* v_w, long long n_w, T* b, const T* db, T* v_b, long long n_b,
    const T* table, const long long* step)
{
    const T* s = table + step[0] * 3;
    GPUNET_GRID_STRIDE(e, n_w + n_b) {
        if (e < n_w) {
            momentum_element(w[e], dw[e], v_w[e], s[0], true, s[1], s[2]);
        } else {
            const long long i = e - n_w;
            momentum_element(b[i], db[i], v_b[i], s[0], false, s[1], s[2]);
        }
    }
}

template <typename T>
__global__ void adam_update_at(
    T* w, const T* dw, T* m_w, T* s_w, long long n_w, T* b, const T* db, T* m_b, T* s_b, long long n_b,
    const T* table, const long long* step)
{
    const T* s = table + step[0] * 7;
    GPUNET_GRID_STRIDE(e, n_w + n_b) {
        if (e < n_w) {
            adam_element(w[e], dw[e], m_w[e], s_w[e], s[0], true, s[1], s[2], s[3], s[4], s[5], s[6]);
        } else {
            const long long i = e - n_w;
            adam_element(b[i], db[i], m_b[i], s_b[i], s[0], false, s[1], s[2], s[3], s[4], s[5], s[6]);
        }
    }
}

#undef GPUNET_GRID_STRIDE
