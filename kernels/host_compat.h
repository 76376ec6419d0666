// Lets the kernels/*.cu files compile as plain C++ for the CPU, so a test
// harness (tests/kernel_host/walk.cpp) can run every kernel body thread by
// thread and compare it with the NumPy reference. Never seen by NVRTC.
//
// The CUDA qualifiers become nothing, the built-in thread coordinates become
// globals that the harness sets before each "thread" runs, and the device
// math functions and atomics map to their host equivalents (the walk is
// sequential, so a plain add is an atomic add).
#ifndef GPUNET_HOST_COMPAT_H
#define GPUNET_HOST_COMPAT_H

#include <cmath>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline

struct gpunet_dim3 {
    unsigned int x = 0, y = 0, z = 0;
};

// Defined (and set) by the harness.
extern gpunet_dim3 threadIdx, blockIdx, blockDim, gridDim;

using std::exp;
using std::floor;
using std::fma;
using std::isnan;
using std::log;
using std::nan;
using std::sqrt;

inline int atomicAdd(int* address, int value)
{
    const int old = *address;
    *address = old + value;
    return old;
}

#endif
