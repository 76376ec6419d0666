// Runs the CUDA kernels of kernels/*.cu on the CPU, thread by thread.
//
// The .cu files are compiled here as plain C++ (kernels/host_compat.h turns
// __global__/__device__/__host__ into nothing and threadIdx/blockIdx/blockDim/
// gridDim into globals). For one launch <<<grid, block>>>, the harness sets
// those globals for every (block, thread) pair in turn and calls the
// __global__ function, so the kernel's own index arithmetic, bounds checks
// and grid-stride loop are what run. Built by tests/test_kernels.py with
// AddressSanitizer and UBSan: a read or write outside an array (each array is
// allocated with exactly its element count) stops the walk with a report.
//
// Usage:
//   walk KERNEL CTYPE GRID BLOCK ORDER ARG...     one launch
//   walk --serve                                  launches from stdin, one a line, the same
//                                                 words separated by tabs; after each it
//                                                 writes "done" to stdout (tests/kernel_support.py
//                                                 keeps one such process, not one per launch)
//     KERNEL  e.g. softmax_cross_entropy; CTYPE float or double (the template's T)
//     ORDER   forward or reverse: the order threads are walked in (a correct
//             kernel's threads are independent, so both give the same result)
//     ARG     A:DTYPE:COUNT:PATH   an array: COUNT elements in a raw file,
//                                  read before the walk and written back after
//             S:DTYPE:VALUE        a scalar passed by value
//     DTYPE   numpy's code for the element type: f4 f8 i4 i8 u1 u8
// Each ARG's DTYPE must be the C type of that kernel parameter, so a wrapper
// that passes, say, int64 labels to an int* parameter fails here.
// Exit status: 0 done, 2 bad usage or argument types (a sanitizer's report exits too).

#include "host_compat.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

gpunet_dim3 threadIdx, blockIdx, blockDim, gridDim;

#include "augment.cu"
#include "conv.cu"
#include "data.cu"
#include "dropout.cu"
#include "layers.cu"
#include "loss.cu"
#include "matmul.cu"
#include "optimizers.cu"
#include "pool.cu"
#include "step.cu"

namespace {

[[noreturn]] void die(const std::string& message)
{
    std::fprintf(stderr, "walk: %s\n", message.c_str());
    std::exit(2);
}

template <typename E> const char* dtype_code();
template <> const char* dtype_code<float>() { return "f4"; }
template <> const char* dtype_code<double>() { return "f8"; }
template <> const char* dtype_code<int>() { return "i4"; }
template <> const char* dtype_code<long long>() { return "i8"; }
template <> const char* dtype_code<unsigned char>() { return "u1"; }
template <> const char* dtype_code<unsigned long long>() { return "u8"; }

struct Arg {
    char kind = 0;      // 'A' array, 'S' scalar
    std::string dtype;  // numpy code
    long long count = 0;
    std::string path;   // arrays
    std::string value;  // scalars
};

std::vector<std::string> split(const std::string& text, char sep, size_t parts)
{
    std::vector<std::string> out;
    size_t start = 0;
    while (out.size() + 1 < parts) {
        const size_t end = text.find(sep, start);
        if (end == std::string::npos) {
            break;
        }
        out.push_back(text.substr(start, end - start));
        start = end + 1;
    }
    out.push_back(text.substr(start));
    return out;
}

class Args {
public:
    explicit Args(const std::vector<std::string>& words)
    {
        for (size_t k = 0; k < words.size(); ++k) {
            const std::string& text = words[k];
            Arg arg;
            if (text.rfind("A:", 0) == 0) {
                const auto f = split(text, ':', 4);
                if (f.size() != 4) die("bad array argument " + text);
                arg.kind = 'A';
                arg.dtype = f[1];
                arg.count = std::atoll(f[2].c_str());
                arg.path = f[3];
            } else if (text.rfind("S:", 0) == 0) {
                const auto f = split(text, ':', 3);
                if (f.size() != 3) die("bad scalar argument " + text);
                arg.kind = 'S';
                arg.dtype = f[1];
                arg.value = f[2];
            } else {
                die("argument " + std::to_string(k) + " is neither A: nor S: " + text);
            }
            args_.push_back(arg);
        }
    }

    size_t size() const { return args_.size(); }

    // Parameter k as an array of E: exactly `count` elements on the heap.
    template <typename E>
    E* array(size_t k)
    {
        const Arg& arg = at(k, 'A', dtype_code<E>());
        auto buffer = std::unique_ptr<E[]>(new E[arg.count]);
        FILE* file = std::fopen(arg.path.c_str(), "rb");
        if (!file) die("cannot read " + arg.path);
        const size_t got = std::fread(buffer.get(), sizeof(E), (size_t)arg.count, file);
        const bool extra = std::fgetc(file) != EOF;
        std::fclose(file);
        if ((long long)got != arg.count || extra) {
            die("file " + arg.path + " does not hold " + std::to_string(arg.count) +
                " elements of " + arg.dtype);
        }
        E* data = buffer.get();
        written_.push_back({arg.path, data, sizeof(E) * (size_t)arg.count});
        owned_.push_back(std::shared_ptr<void>(buffer.release(), [](void* p) {
            delete[] static_cast<E*>(p);
        }));
        return data;
    }

    // Parameter k as a scalar of type E.
    template <typename E>
    E scalar(size_t k)
    {
        const Arg& arg = at(k, 'S', dtype_code<E>());
        if (dtype_code<E>()[0] == 'f') {
            return (E)std::strtod(arg.value.c_str(), nullptr);
        }
        if (dtype_code<E>()[0] == 'u') {  // unsigned: the whole range (a 64-bit key above 2^63)
            return (E)std::strtoull(arg.value.c_str(), nullptr, 10);
        }
        return (E)std::strtoll(arg.value.c_str(), nullptr, 10);
    }

    // Write every array back to its file (outputs and in-place results; the
    // inputs too, so the caller can check that they were left alone).
    void write_back() const
    {
        for (const auto& w : written_) {
            FILE* file = std::fopen(w.path.c_str(), "wb");
            if (!file || std::fwrite(w.data, 1, w.bytes, file) != w.bytes) {
                die("cannot write " + w.path);
            }
            std::fclose(file);
        }
    }

private:
    const Arg& at(size_t k, char kind, const char* dtype) const
    {
        if (k >= args_.size()) die("missing argument " + std::to_string(k));
        const Arg& arg = args_[k];
        if (arg.kind != kind || arg.dtype != dtype) {
            die("argument " + std::to_string(k) + " is " + arg.kind + ":" + arg.dtype +
                ", the kernel takes " + kind + ":" + dtype);
        }
        return arg;
    }

    struct Written {
        std::string path;
        const void* data;
        size_t bytes;
    };
    std::vector<Arg> args_;
    std::vector<Written> written_;
    std::vector<std::shared_ptr<void>> owned_;
};

// One launch <<<grid, block>>>: every thread of every block runs `thread`.
template <typename F>
void walk(unsigned grid, unsigned block, bool reverse, F thread)
{
    gridDim = {grid, 1, 1};
    blockDim = {block, 1, 1};
    for (unsigned bi = 0; bi < grid; ++bi) {
        for (unsigned ti = 0; ti < block; ++ti) {
            blockIdx = {reverse ? grid - 1 - bi : bi, 0, 0};
            threadIdx = {reverse ? block - 1 - ti : ti, 0, 0};
            thread();
        }
    }
}

void need(const Args& a, const std::string& kernel, size_t count)
{
    if (a.size() != count) {
        die(kernel + " takes " + std::to_string(count) + " arguments, got " +
            std::to_string(a.size()));
    }
}

// The arguments an optimizer's two kernels (kernels/optimizers.cu) begin with, in their order: the
// weights' group (parameters, gradients, state, size), then the biases'. `*_update` goes on with its
// per-step numbers as scalars, `*_update_at` with a table of them and the step; both read these here.
template <typename T>
struct SgdGroups {
    T* w; const T* dw; long long n_w;
    T* b; const T* db; long long n_b;

    explicit SgdGroups(Args& a)
        : w(a.array<T>(0)), dw(a.array<T>(1)), n_w(a.scalar<long long>(2)),
          b(a.array<T>(3)), db(a.array<T>(4)), n_b(a.scalar<long long>(5)) {}
};

template <typename T>
struct MomentumGroups {  // v: the velocity
    T* w; const T* dw; T* v_w; long long n_w;
    T* b; const T* db; T* v_b; long long n_b;

    explicit MomentumGroups(Args& a)
        : w(a.array<T>(0)), dw(a.array<T>(1)), v_w(a.array<T>(2)), n_w(a.scalar<long long>(3)),
          b(a.array<T>(4)), db(a.array<T>(5)), v_b(a.array<T>(6)), n_b(a.scalar<long long>(7)) {}
};

template <typename T>
struct AdamGroups {  // m: the mean, s: the square
    T* w; const T* dw; T* m_w; T* s_w; long long n_w;
    T* b; const T* db; T* m_b; T* s_b; long long n_b;

    explicit AdamGroups(Args& a)
        : w(a.array<T>(0)), dw(a.array<T>(1)), m_w(a.array<T>(2)), s_w(a.array<T>(3)), n_w(a.scalar<long long>(4)),
          b(a.array<T>(5)), db(a.array<T>(6)), m_b(a.array<T>(7)), s_b(a.array<T>(8)), n_b(a.scalar<long long>(9)) {}
};

template <typename T>
void run(const std::string& kernel, Args& a, unsigned grid, unsigned block, bool reverse)
{
    if (kernel == "softmax_cross_entropy") {
        need(a, kernel, 6);
        const T* Z = a.array<T>(0);
        const int* labels = a.array<int>(1);
        T* dZ = a.array<T>(2);
        T* losses = a.array<T>(3);
        const long long classes = a.scalar<long long>(4), m = a.scalar<long long>(5);
        walk(grid, block, reverse, [&] { softmax_cross_entropy<T>(Z, labels, dZ, losses, classes, m); });
    } else if (kernel == "count_correct") {
        need(a, kernel, 5);
        const T* Z = a.array<T>(0);
        const int* labels = a.array<int>(1);
        int* count = a.array<int>(2);
        const long long classes = a.scalar<long long>(3), m = a.scalar<long long>(4);
        walk(grid, block, reverse, [&] { count_correct<T>(Z, labels, count, classes, m); });
    } else if (kernel == "softmax_cross_entropy_counted") {
        need(a, kernel, 8);
        T* Z = a.array<T>(0);
        const T* b = a.array<T>(1);
        const int* labels = a.array<int>(2);
        T* dZ = a.array<T>(3);
        T* losses = a.array<T>(4);
        int* count = a.array<int>(5);
        const long long classes = a.scalar<long long>(6), m = a.scalar<long long>(7);
        walk(grid, block, reverse,
             [&] { softmax_cross_entropy_counted<T>(Z, b, labels, dZ, losses, count, classes, m); });
    } else if (kernel == "bias_relu") {
        need(a, kernel, 4);
        T* Z = a.array<T>(0);
        const T* b = a.array<T>(1);
        const long long units = a.scalar<long long>(2), m = a.scalar<long long>(3);
        walk(grid, block, reverse, [&] { bias_relu<T>(Z, b, units, m); });
    } else if (kernel == "relu_backward") {
        need(a, kernel, 3);
        T* dA = a.array<T>(0);
        const T* A = a.array<T>(1);
        const long long n = a.scalar<long long>(2);
        walk(grid, block, reverse, [&] { relu_backward<T>(dA, A, n); });
    } else if (kernel == "gather_scaled") {
        need(a, kernel, 6);
        const unsigned char* images = a.array<unsigned char>(0);
        const long long* index = a.array<long long>(1);
        T* A0 = a.array<T>(2);
        const long long rows = a.scalar<long long>(3), features = a.scalar<long long>(4),
                        batch = a.scalar<long long>(5);
        walk(grid, block, reverse, [&] { gather_scaled<T>(images, index, A0, rows, features, batch); });
    } else if (kernel == "transpose_scaled") {
        need(a, kernel, 4);
        const unsigned char* images = a.array<unsigned char>(0);
        T* A0 = a.array<T>(1);
        const long long rows = a.scalar<long long>(2), features = a.scalar<long long>(3);
        walk(grid, block, reverse, [&] { transpose_scaled<T>(images, A0, rows, features); });
    } else if (kernel == "affine_augment") {
        need(a, kernel, 7);
        const unsigned char* images = a.array<unsigned char>(0);
        const long long* index = a.array<long long>(1);
        const T* transforms = a.array<T>(2);
        T* A0 = a.array<T>(3);
        const long long rows = a.scalar<long long>(4), side = a.scalar<long long>(5), batch = a.scalar<long long>(6);
        walk(grid, block, reverse, [&] { affine_augment<T>(images, index, transforms, A0, rows, side, batch); });
    } else if (kernel == "im2col" || kernel == "col2im") {
        need(a, kernel, 10);
        const T* in = a.array<T>(0);
        T* out = a.array<T>(1);
        long long s[8];
        for (size_t k = 0; k < 8; ++k) s[k] = a.scalar<long long>(k + 2);  // C H W m k pad H_out W_out
        if (kernel == "im2col") {
            walk(grid, block, reverse, [&] { im2col<T>(in, out, s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]); });
        } else {
            walk(grid, block, reverse, [&] { col2im<T>(in, out, s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]); });
        }
    } else if (kernel == "max_pool") {
        need(a, kernel, 10);
        const T* x = a.array<T>(0);
        T* y = a.array<T>(1);
        unsigned char* argmax = a.array<unsigned char>(2);
        long long s[7];
        for (size_t k = 0; k < 7; ++k) s[k] = a.scalar<long long>(k + 3);  // C H W m size H_out W_out
        walk(grid, block, reverse, [&] { max_pool<T>(x, y, argmax, s[0], s[1], s[2], s[3], s[4], s[5], s[6]); });
    } else if (kernel == "max_pool_backward") {
        need(a, kernel, 10);
        const T* dy = a.array<T>(0);
        const unsigned char* argmax = a.array<unsigned char>(1);
        T* dx = a.array<T>(2);
        long long s[7];
        for (size_t k = 0; k < 7; ++k) s[k] = a.scalar<long long>(k + 3);  // C H W m size H_out W_out
        walk(grid, block, reverse,
             [&] { max_pool_backward<T>(dy, argmax, dx, s[0], s[1], s[2], s[3], s[4], s[5], s[6]); });
    } else if (kernel == "dropout_mask") {
        need(a, kernel, 7);
        T* mask = a.array<T>(0);
        const unsigned long long key = a.scalar<unsigned long long>(1), threshold = a.scalar<unsigned long long>(2);
        const T scale = a.scalar<T>(3);
        const long long units = a.scalar<long long>(4), k = a.scalar<long long>(5), first = a.scalar<long long>(6);
        walk(grid, block, reverse, [&] { dropout_mask<T>(mask, key, threshold, scale, units, k, first); });
    } else if (kernel == "dropout_mask_at") {
        need(a, kernel, 9);
        T* mask = a.array<T>(0);
        const unsigned long long state = a.scalar<unsigned long long>(1);
        const long long* first_step = a.array<long long>(2);
        const long long* step = a.array<long long>(3);
        const unsigned long long threshold = a.scalar<unsigned long long>(4);
        const T scale = a.scalar<T>(5);
        const long long units = a.scalar<long long>(6), k = a.scalar<long long>(7), first = a.scalar<long long>(8);
        walk(grid, block, reverse,
             [&] { dropout_mask_at<T>(mask, state, first_step, step, threshold, scale, units, k, first); });
    } else if (kernel == "sgd_update") {
        need(a, kernel, 8);
        const SgdGroups<T> g(a);
        const T decay = a.scalar<T>(6), lr = a.scalar<T>(7);
        walk(grid, block, reverse, [&] { sgd_update<T>(g.w, g.dw, g.n_w, g.b, g.db, g.n_b, decay, lr); });
    } else if (kernel == "momentum_update") {
        need(a, kernel, 11);
        const MomentumGroups<T> g(a);
        const T decay = a.scalar<T>(8), lr = a.scalar<T>(9), beta = a.scalar<T>(10);
        walk(grid, block, reverse, [&] {
            momentum_update<T>(g.w, g.dw, g.v_w, g.n_w, g.b, g.db, g.v_b, g.n_b, decay, lr, beta);
        });
    } else if (kernel == "adam_update") {
        need(a, kernel, 17);
        const AdamGroups<T> g(a);
        T s[7];
        for (size_t k = 0; k < 7; ++k) s[k] = a.scalar<T>(k + 10);  // decay b1 1-b1 b2 1-b2 step_size eps
        walk(grid, block, reverse, [&] {
            adam_update<T>(g.w, g.dw, g.m_w, g.s_w, g.n_w, g.b, g.db, g.m_b, g.s_b, g.n_b,
                           s[0], s[1], s[2], s[3], s[4], s[5], s[6]);
        });
    } else if (kernel == "sgd_update_at") {
        need(a, kernel, 8);
        const SgdGroups<T> g(a);
        const T* table = a.array<T>(6);
        const long long* step = a.array<long long>(7);
        walk(grid, block, reverse, [&] { sgd_update_at<T>(g.w, g.dw, g.n_w, g.b, g.db, g.n_b, table, step); });
    } else if (kernel == "momentum_update_at") {
        need(a, kernel, 10);
        const MomentumGroups<T> g(a);
        const T* table = a.array<T>(8);
        const long long* step = a.array<long long>(9);
        walk(grid, block, reverse, [&] {
            momentum_update_at<T>(g.w, g.dw, g.v_w, g.n_w, g.b, g.db, g.v_b, g.n_b, table, step);
        });
    } else if (kernel == "adam_update_at") {
        need(a, kernel, 12);
        const AdamGroups<T> g(a);
        const T* table = a.array<T>(10);
        const long long* step = a.array<long long>(11);
        walk(grid, block, reverse, [&] {
            adam_update_at<T>(g.w, g.dw, g.m_w, g.s_w, g.n_w, g.b, g.db, g.m_b, g.s_b, g.n_b, table, step);
        });
    } else if (kernel == "batch_begin") {
        need(a, kernel, 7);
        const long long* order = a.array<long long>(0);
        const int* labels = a.array<int>(1);
        const long long* step = a.array<long long>(2);
        long long* index = a.array<long long>(3);
        int* batch_labels = a.array<int>(4);
        const long long batch = a.scalar<long long>(5), m = a.scalar<long long>(6);
        walk(grid, block, reverse, [&] { batch_begin<T>(order, labels, step, index, batch_labels, batch, m); });
    } else if (kernel == "batch_end") {
        need(a, kernel, 5);
        const T* batch_losses = a.array<T>(0);
        T* losses = a.array<T>(1);
        long long* step = a.array<long long>(2);
        const long long batch = a.scalar<long long>(3), m = a.scalar<long long>(4);
        walk(grid, block, reverse, [&] { batch_end<T>(batch_losses, losses, step, batch, m); });
    } else if (kernel == "matmul") {
        need(a, kernel, 10);
        const T* A = a.array<T>(0);
        const T* B = a.array<T>(1);
        T* C = a.array<T>(2);
        const long long M = a.scalar<long long>(3), N = a.scalar<long long>(4), K = a.scalar<long long>(5);
        const long long a_row = a.scalar<long long>(6), a_col = a.scalar<long long>(7);
        const long long b_row = a.scalar<long long>(8), b_col = a.scalar<long long>(9);
        walk(grid, block, reverse, [&] { matmul<T>(A, B, C, M, N, K, a_row, a_col, b_row, b_col); });
    } else {
        die("unknown kernel " + kernel);
    }
}

// One launch: words = KERNEL CTYPE GRID BLOCK ORDER ARG...
void launch(const std::vector<std::string>& words)
{
    if (words.size() < 5) {
        die("usage: walk KERNEL CTYPE GRID BLOCK ORDER ARG...  or  walk --serve");
    }
    const std::string &kernel = words[0], &ctype = words[1], &order = words[4];
    const long long grid = std::atoll(words[2].c_str()), block = std::atoll(words[3].c_str());
    if (grid < 1 || block < 1 || block > 1024 || grid > 2147483647LL) {
        die("bad launch shape <<<" + words[2] + ", " + words[3] + ">>>");
    }
    if (order != "forward" && order != "reverse") {
        die("ORDER is forward or reverse, not " + order);
    }
    Args args(std::vector<std::string>(words.begin() + 5, words.end()));
    const bool reverse = order == "reverse";
    if (ctype == "float") {
        run<float>(kernel, args, (unsigned)grid, (unsigned)block, reverse);
    } else if (ctype == "double") {
        run<double>(kernel, args, (unsigned)grid, (unsigned)block, reverse);
    } else {
        die("CTYPE is float or double, not " + ctype);
    }
    args.write_back();
}

}  // namespace

int main(int argc, char** argv)
{
    if (argc == 2 && std::string(argv[1]) == "--serve") {
        // A process start under the sanitizers costs ~15 ms; training through the
        // stand-in launches thousands of kernels.
        std::string line;
        while (std::getline(std::cin, line)) {
            launch(split(line, '\t', (size_t)-1));
            std::printf("done\n");
            std::fflush(stdout);
        }
        return 0;
    }
    launch(std::vector<std::string>(argv + 1, argv + argc));
    return 0;
}
