// What the native loops share (recurrax/native/*.cc): float32 tanh and sigmoid, products of a
// few rows with a matrix packed into panels (AVX-512, else AVX2), and the batch's rows spread over
// threads.
// Each loop gives a thread its own rows of the batch (its own sequences) and runs them through
// every step, so that the steps use every core without the threads meeting once per step.

#pragma once

#include <immintrin.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

// Everything here stays inside the library that includes it (hidden from the dynamic linker): each
// cell's loops are a library of their own, possibly built from another version of this file, and
// their inline functions and the helper threads' instance must not stand in for one another's.
#pragma GCC visibility push(hidden)

namespace recurrax_native {

// tanh by a rational function: float32 accuracy (largest error against float64 on [-12, 12]
// 2.6e-7, as XLA's CPU tanh), +-1 for |x| >= 7.9; NaN stays NaN (the comparisons fail).
inline float tanh_approx(float x) {
  const float bound = 7.90531110763549805f;
  x = x > bound ? bound : (x < -bound ? -bound : x);
  const float x2 = x * x;
  float p = x2 * -2.76076847742355e-16f + 2.00018790482477e-13f;
  p = x2 * p + -8.60467152213735e-11f;
  p = x2 * p + 5.12229709037114e-08f;
  p = x2 * p + 1.48572235717979e-05f;
  p = x2 * p + 6.37261928875436e-04f;
  p = x2 * p + 4.89352455891786e-03f;
  p = x * p;
  float q = x2 * 1.19825839466702e-06f + 1.18534705686654e-04f;
  q = x2 * q + 2.26843463243900e-03f;
  q = x2 * q + 4.89352518554385e-03f;
  return p / q;
}

inline float sigmoid_approx(float x) { return 0.5f * tanh_approx(0.5f * x) + 0.5f; }

// An Elman network's activation, numbered as recurrax.native numbers them.
enum Activation : int32_t { kTanh = 0, kSigmoid = 1, kRelu = 2, kIdentity = 3 };

inline bool known_activation(int32_t activation) { return activation >= kTanh && activation <= kIdentity; }

// z <- activation(z) over n numbers (relu keeps a NaN a NaN, as XLA's does).
inline void activate(int32_t activation, float* __restrict z, int64_t n) {
  switch (activation) {
    case kTanh: for (int64_t k = 0; k < n; ++k) z[k] = tanh_approx(z[k]); break;
    case kSigmoid: for (int64_t k = 0; k < n; ++k) z[k] = sigmoid_approx(z[k]); break;
    case kRelu: for (int64_t k = 0; k < n; ++k) z[k] = z[k] < 0.0f ? 0.0f : z[k]; break;
    default: break;  // identity
  }
}

// dz = g * activation'(z) over n numbers, the derivative written in terms of the output y = activation(z).
inline void through_activation(int32_t activation, const float* __restrict y, const float* __restrict g,
                               float* __restrict dz, int64_t n) {
  switch (activation) {
    case kTanh: for (int64_t k = 0; k < n; ++k) dz[k] = g[k] * (1.0f - y[k] * y[k]); break;
    case kSigmoid: for (int64_t k = 0; k < n; ++k) dz[k] = g[k] * y[k] * (1.0f - y[k]); break;
    case kRelu: for (int64_t k = 0; k < n; ++k) dz[k] = y[k] > 0.0f ? g[k] : 0.0f; break;
    default: for (int64_t k = 0; k < n; ++k) dz[k] = g[k]; break;
  }
}

// The processor's vectors: 16 numbers with AVX-512, else 8 with AVX2 and FMA.
#if defined(__AVX512F__)
using Vector = __m512;
constexpr int kLanes = 16;
inline Vector load(const float* p) { return _mm512_loadu_ps(p); }
inline void store(float* p, Vector v) { _mm512_storeu_ps(p, v); }
inline Vector zeros() { return _mm512_setzero_ps(); }
inline Vector add(Vector a, Vector b) { return _mm512_add_ps(a, b); }
inline Vector multiply(Vector a, Vector b) { return _mm512_mul_ps(a, b); }
inline Vector broadcast(const float* p) { return _mm512_set1_ps(*p); }
inline Vector multiply_add(Vector a, Vector b, Vector c) { return _mm512_fmadd_ps(a, b, c); }
// The most rows a product block takes: their 16 sums (2 vectors a row) and a panel row in 32 registers.
constexpr int kBlockRows = 8;
#elif defined(__AVX2__) && defined(__FMA__)
using Vector = __m256;
constexpr int kLanes = 8;
inline Vector load(const float* p) { return _mm256_loadu_ps(p); }
inline void store(float* p, Vector v) { _mm256_storeu_ps(p, v); }
inline Vector zeros() { return _mm256_setzero_ps(); }
inline Vector add(Vector a, Vector b) { return _mm256_add_ps(a, b); }
inline Vector multiply(Vector a, Vector b) { return _mm256_mul_ps(a, b); }
inline Vector broadcast(const float* p) { return _mm256_broadcast_ss(p); }
inline Vector multiply_add(Vector a, Vector b, Vector c) { return _mm256_fmadd_ps(a, b, c); }
// The most rows a product block takes: their 12 sums (2 vectors a row), a panel row and a broadcast in
// 16 registers.
constexpr int kBlockRows = 6;
#else
#error "recurrax's native loops need AVX-512, or AVX2 with FMA (-march=native on such a processor)"
#endif

// A panel's width: two vectors (32 numbers with AVX-512, 16 with AVX2).
constexpr int64_t kPanelWidth = 2 * kLanes;

// A K x N matrix (N a multiple of 16) stored as column panels, each K x kPanelWidth (the last K x 16
// where N is not a multiple of kPanelWidth) and contiguous, so that a product reads a panel's rows
// one after the other instead of 4N bytes apart: panel n0 (a multiple of kPanelWidth) starts at n0 * K.
struct Panels {
  std::vector<float> data;
  int64_t k_size, n_size;

  Panels(const float* w, int64_t k, int64_t n) : data(k * n), k_size(k), n_size(n) {
    for (int64_t n0 = 0; n0 < n; n0 += kPanelWidth) {
      const int64_t width = std::min<int64_t>(kPanelWidth, n - n0);
      float* panel = data.data() + n0 * k;
      for (int64_t row = 0; row < k; ++row) std::memcpy(panel + row * width, w + row * n + n0, width * sizeof(float));
    }
  }
};

// out[r, n0:n0 + V L] = add[r, n0:n0 + V L] + bias[n0:n0 + V L] + a[r, :] @ w[:, n0:n0 + V L] for R
// rows (add and bias may be null: zeros), L = kLanes: R x V vectors of sums kept in registers over
// all of k. panel: w's K x V L panel at n0 (Panels). Row r of a, add and out starts at a + r * lda
// (add + r * ldd, out + r * ldo). Not inlined, so that its loop has the registers to itself, and
// unrolled, so that GCC keeps the sums in registers (it wrote them to memory at every k with AVX2).
template <int R, int V>
[[gnu::noinline]] void block_product(const float* a, int64_t lda, const float* panel, int64_t k_size, int64_t n0,
                                     const float* add_rows, int64_t ldd, const float* bias, float* out, int64_t ldo) {
  Vector acc[R][V];
#pragma GCC unroll 16
  for (int j = 0; j < V; ++j) {
    const Vector b = bias ? load(bias + n0 + kLanes * j) : zeros();
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) acc[r][j] = add_rows ? add(b, load(add_rows + r * ldd + n0 + kLanes * j)) : b;
  }
  for (int64_t k = 0; k < k_size; ++k) {
    Vector wk[V];
#pragma GCC unroll 16
    for (int j = 0; j < V; ++j) {
      wk[j] = load(panel + k * V * kLanes + kLanes * j);
      // In a register from here: GCC would otherwise read it again from memory in each row's
      // multiply-add, which halved the block's rate at four rows or fewer (57 against 113 GFLOP/s).
      asm("" : "+v"(wk[j]));
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const Vector x = broadcast(a + r * lda + k);
#pragma GCC unroll 16
      for (int j = 0; j < V; ++j) acc[r][j] = multiply_add(x, wk[j], acc[r][j]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 16
    for (int j = 0; j < V; ++j) store(out + r * ldo + n0 + kLanes * j, acc[r][j]);
  }
}

// block_product for `rows` (1 to R) rows.
template <int R, int V>
void block_of(int64_t rows, const float* a, int64_t lda, const float* panel, int64_t k_size, int64_t n0,
              const float* add_rows, int64_t ldd, const float* bias, float* out, int64_t ldo) {
  if constexpr (R > 1) {
    if (rows < R) {
      block_of<R - 1, V>(rows, a, lda, panel, k_size, n0, add_rows, ldd, bias, out, ldo);
      return;
    }
  }
  block_product<R, V>(a, lda, panel, k_size, n0, add_rows, ldd, bias, out, ldo);
}

// out = add + bias + a @ w for rows x N (add, bias may be null): panel by panel, so that a panel
// stays in cache while every row goes through it, kBlockRows rows at a time.
inline void matrix_product(int64_t rows, const float* a, int64_t lda, const Panels& w, const float* add,
                           int64_t ldd, const float* bias, float* out, int64_t ldo) {
  const int64_t k_size = w.k_size;
  for (int64_t n0 = 0; n0 < w.n_size; n0 += kPanelWidth) {
    const float* panel = w.data.data() + n0 * k_size;
    for (int64_t r0 = 0; r0 < rows; r0 += kBlockRows) {
      const int64_t count = std::min<int64_t>(kBlockRows, rows - r0);
      const float* dr = add ? add + r0 * ldd : nullptr;
      if (n0 + kPanelWidth <= w.n_size) {
        block_of<kBlockRows, 2>(count, a + r0 * lda, lda, panel, k_size, n0, dr, ldd, bias, out + r0 * ldo, ldo);
      } else {
        block_of<kBlockRows, 1>(count, a + r0 * lda, lda, panel, k_size, n0, dr, ldd, bias, out + r0 * ldo, ldo);
      }
    }
  }
}

// Episode starts: a step whose start is set (starts (B, T), not 0), unless it is masked (mask (B,
// T), 0: the plain scan's rule, recurrax.scan), reads the reset state (B, width) instead of the
// state before it; backward, the gradient that step passes back goes to the reset state's gradient
// instead (pass_back). Made without the states, for a loop that only passes gradients back.
struct Resets {
  const float* starts;
  const float* valid;
  const float* states;  // null where made without them
  int64_t length, width;
  bool fits;  // whether starts (and the states) have those shapes

  Resets(xla::ffi::Buffer<xla::ffi::F32> starts_, xla::ffi::Buffer<xla::ffi::F32> mask,
         xla::ffi::Buffer<xla::ffi::F32> states_, int64_t batch, int64_t length_, int64_t width_)
      : Resets(starts_, mask, batch, length_, width_) {
    states = states_.typed_data();
    fits = fits && states_.element_count() == static_cast<size_t>(batch * width_);
  }

  Resets(xla::ffi::Buffer<xla::ffi::F32> starts_, xla::ffi::Buffer<xla::ffi::F32> mask, int64_t batch,
         int64_t length_, int64_t width_)
      : starts(starts_.typed_data()), valid(mask.typed_data()), states(nullptr), length(length_), width(width_),
        fits(starts_.element_count() == static_cast<size_t>(batch * length_)) {}

  // Whether step t of sequence seq starts an episode: its start set and the step not masked.
  bool at(int64_t seq, int64_t t) const {
    const int64_t i = seq * length + t;
    return starts[i] != 0.0f && valid[i] != 0.0f;
  }
  const float* state(int64_t seq) const { return states + seq * width; }

  // The state step t of sequence seq reads: the reset state where it starts an episode, else the
  // row before it in `states` (B, T, width), else (t = 0) the sequence's row in `first` (B, width).
  const float* before(int64_t seq, int64_t t, const float* all, const float* first) const {
    if (at(seq, t)) return state(seq);
    return t > 0 ? all + (seq * length + t - 1) * width : first + seq * width;
  }
  void restore(int64_t seq, float* into) const { std::memcpy(into, state(seq), width * sizeof(float)); }

  // For the rows [first, first + rows) whose step t starts an episode: their gradient of the state
  // before the step (a row of dh, width numbers) goes to the reset state's (the row of sums), not on.
  void pass_back(int64_t first, int64_t rows, int64_t t, float* dh, float* sums) const {
    for (int64_t r = 0; r < rows; ++r) {
      if (at(first + r, t)) pass_to_reset(dh + r * width, sums + r * width, width);
    }
  }

  static void pass_to_reset(float* __restrict dh, float* __restrict sum, int64_t n) {
    for (int64_t k = 0; k < n; ++k) {
      sum[k] += dh[k];
      dh[k] = 0.0f;
    }
  }
};

// Asks for the n numbers at p to be brought into the cache ahead of their use: a loop's rows lie
// a whole sequence apart (T x width numbers), too far for the processor to guess the next one.
inline void prefetch(const float* p, int64_t n) {
  for (int64_t k = 0; k < n; k += 16) __builtin_prefetch(p + k, 0, 3);
}

// The same for numbers about to be written.
inline void prefetch_for_writing(float* p, int64_t n) {
  for (int64_t k = 0; k < n; k += 16) __builtin_prefetch(p + k, 1, 3);
}

// How many threads share a batch: the CPUs this process may run on, at least 8 rows each.
inline int64_t thread_count(int64_t batch) {
  int64_t cpus = static_cast<int64_t>(std::thread::hardware_concurrency());
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) cpus = CPU_COUNT(&set);
  return std::max<int64_t>(1, std::min<int64_t>(cpus, batch / 8));
}

// Threads kept waiting for work, so that a call does not start and end threads of its own. A
// call's shares of work go to whoever claims them first: this thread takes share 0, then any
// share no helper has claimed yet; a waiting helper needs 50-100 us to wake up on a virtual
// machine, so a call that is done sooner runs on this thread alone, and a longer one is joined by
// the helpers as they wake. One call at a time uses the helpers: a call that finds them busy (XLA
// runs independent operations side by side, two directions of a bidirectional layer say) starts
// threads of its own. The helpers live as long as the process, waiting on a condition variable.
class Helpers {
 public:
  static Helpers& instance() {
    static Helpers* helpers = new Helpers();  // never destroyed: waiting helpers end with the process
    return *helpers;
  }

  // Runs job(i) for each i in [0, count), on this thread and count - 1 helpers; returns when all are done.
  template <typename Job>
  void run(int64_t count, const Job& job) {
    std::atomic<int64_t> next{1};
    const std::function<void()> claim = [&] {
      for (int64_t i = next.fetch_add(1); i < count; i = next.fetch_add(1)) job(i);
    };
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock()) {
      std::vector<std::thread> own;
      for (int64_t i = 1; i < count; ++i) own.emplace_back(claim);
      job(0);
      claim();
      for (auto& thread : own) thread.join();
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      while (static_cast<int64_t>(threads_.size()) < count - 1) threads_.emplace_back([this] { serve(); });
      task_ = &claim;
      open_ = true;
      ++round_;
    }
    wake_.notify_all();
    job(0);
    claim();
    std::unique_lock<std::mutex> lock(mutex_);
    open_ = false;  // a helper that wakes from now on finds nothing to do
    done_.wait(lock, [this] { return active_ == 0; });
    task_ = nullptr;
  }

 private:
  void serve() {
    int64_t seen = 0;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return round_ != seen; });
      seen = round_;
      if (!open_) continue;
      ++active_;
      const std::function<void()>* task = task_;
      lock.unlock();
      (*task)();
      lock.lock();
      if (--active_ == 0) done_.notify_one();
    }
  }

  std::mutex busy_;   // held by the call whose shares the helpers may claim
  std::mutex mutex_;  // guards what follows
  std::condition_variable wake_, done_;
  std::vector<std::thread> threads_;
  const std::function<void()>* task_ = nullptr;  // claims shares until none is left
  bool open_ = false;                            // whether a helper may still join the call
  int64_t round_ = 0, active_ = 0;               // calls so far; helpers inside the current one
};

// Runs work(first_row, row_count) over the batch's rows on thread_count(batch) threads (this one
// and helpers) and waits for them.
template <typename Work>
void over_rows(int64_t batch, Work work) {
  const int64_t threads = thread_count(batch);
  if (threads == 1) {
    work(0, batch);
    return;
  }
  Helpers::instance().run(threads, [&](int64_t i) {
    const int64_t first = batch * i / threads, last = batch * (i + 1) / threads;
    work(first, last - first);
  });
}

// A handler's binding with `count` (at least 1) more float32 buffers as arguments (results):
//   results<3>(arguments<5>(xla::ffi::Ffi::Bind()).Attr<int32_t>("activation"))
// binds f(5 buffers, an int32 attribute, 3 result buffers), in that order. (A binding cannot be
// copied or moved, only extended: each step returns the next one as it is made.)
template <int count, typename Binding>
auto arguments(Binding&& binding) {
  if constexpr (count == 1) {
    return std::move(binding).template Arg<xla::ffi::Buffer<xla::ffi::F32>>();
  } else {
    return arguments<count - 1>(std::move(binding).template Arg<xla::ffi::Buffer<xla::ffi::F32>>());
  }
}

template <int count, typename Binding>
auto results(Binding&& binding) {
  if constexpr (count == 1) {
    return std::move(binding).template Ret<xla::ffi::Buffer<xla::ffi::F32>>();
  } else {
    return results<count - 1>(std::move(binding).template Ret<xla::ffi::Buffer<xla::ffi::F32>>());
  }
}

}  // namespace recurrax_native

#pragma GCC visibility pop
