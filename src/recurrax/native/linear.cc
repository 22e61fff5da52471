// The loops over time of the linear recurrence with forgetting (LinearRecurrence) as XLA custom
// calls on a CPU (see loops.h): no product in the loop, only the state's decay; XLA computes the
// input products W x_t before it. Built and registered by recurrax/native/__init__.py.
//
// Forward, per sequence and step t:   h_t = gamma * h_{t-1} + (W x_t + b)
// Backward, from the last step to the first, with dh the gradient carried to step t:
//   dh += dy_t;   dp_t = dh;   dgamma += dh * h_{t-1};   db += dh;   dh <- gamma * dh
// A masked step keeps h and outputs it as it is; backward it passes dh on, with dp_t = 0. A step
// that starts an episode (loops.h: Resets) reads the reset state instead of h_{t-1}; backward, the
// gradient it passes back goes to the reset state's. Each sequence runs block of columns by block
// of columns, the block's state (and sums) kept in registers through every step.

#include <cstdint>

#include "loops.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using namespace recurrax_native;

// The state's numbers a loop keeps in registers through every step of a sequence: a block of
// columns, so that a step loads and stores only what it reads from or writes to its arrays. The
// forward loop holds three vectors per vector of columns (h, gamma, b), the backward loop five (dh,
// dgamma, db, gamma, the reset state's gradient): with AVX-512's 32 registers, blocks of 128 and 64
// numbers; with AVX2's 16, of 32 and 16.
constexpr int kForwardVectors = kLanes == 16 ? 8 : 4;
constexpr int kBackwardVectors = kLanes == 16 ? 4 : 2;

// Columns [c0, c0 + V kLanes) of one sequence's forward loop. Row t of p and out starts at
// p + t * width (out + t * width); h0 and the reset state at the sequence's own rows.
template <int V>
[[gnu::noinline]] void forward_columns(int64_t seq, int64_t c0, int64_t length, int64_t width, const float* p,
                                       const float* valid, const Resets& resets, const float* decay,
                                       const float* bias, const float* h_first, float* out) {
  Vector h[V], g[V], b[V];
#pragma GCC unroll 16
  for (int j = 0; j < V; ++j) {
    h[j] = load(h_first + c0 + kLanes * j);
    g[j] = load(decay + c0 + kLanes * j);
    b[j] = load(bias + c0 + kLanes * j);
  }
  for (int64_t t = 0; t < length; ++t) {
    const int64_t at = t * width + c0;
    if (valid[t] != 0.0f) {
      if (resets.at(seq, t)) {
#pragma GCC unroll 16
        for (int j = 0; j < V; ++j) h[j] = load(resets.state(seq) + c0 + kLanes * j);
      }
#pragma GCC unroll 16
      for (int j = 0; j < V; ++j) h[j] = multiply_add(g[j], h[j], add(load(p + at + kLanes * j), b[j]));
    }
#pragma GCC unroll 16
    for (int j = 0; j < V; ++j) store(out + at + kLanes * j, h[j]);
  }
}

// Column c of one sequence's forward loop, one number at a time (the columns past the last vector).
void forward_column(int64_t seq, int64_t c, int64_t length, int64_t width, const float* p, const float* valid,
                    const Resets& resets, const float* decay, const float* bias, const float* h_first, float* out) {
  float h = h_first[c];
  for (int64_t t = 0; t < length; ++t) {
    const int64_t at = t * width + c;
    if (valid[t] != 0.0f) {
      if (resets.at(seq, t)) h = resets.state(seq)[c];
      h = decay[c] * h + (p[at] + bias[c]);
    }
    out[at] = h;
  }
}

// Shapes: ps (B, T, H) the input products W x_t, mask (B, T) (1: the step runs; 0: it keeps the
// state), starts (B, T) and h_reset (B, H) (Resets), gamma and bias (H), h0 (B, H) -> hs (B, T, H).
ffi::Error LinearForwardImpl(ffi::Buffer<ffi::F32> ps, ffi::Buffer<ffi::F32> mask, ffi::Buffer<ffi::F32> starts,
                             ffi::Buffer<ffi::F32> h_reset, ffi::Buffer<ffi::F32> gamma, ffi::Buffer<ffi::F32> bias,
                             ffi::Buffer<ffi::F32> h0, ffi::ResultBuffer<ffi::F32> hs) {
  const auto dims = ps.dimensions();
  if (dims.size() != 3) return ffi::Error::InvalidArgument("linear_forward: ps must be (B, T, H)");
  const int64_t batch = dims[0], length = dims[1], hidden = dims[2];
  if (gamma.element_count() != static_cast<size_t>(hidden) || bias.element_count() != static_cast<size_t>(hidden) ||
      h0.element_count() != static_cast<size_t>(batch * hidden)) {
    return ffi::Error::InvalidArgument("linear_forward: gamma and bias must be (H), h0 (B, H)");
  }
  if (mask.element_count() != static_cast<size_t>(batch * length)) {
    return ffi::Error::InvalidArgument("linear_forward: mask must be (B, T)");
  }
  const Resets resets(starts, mask, h_reset, batch, length, hidden);
  if (!resets.fits) return ffi::Error::InvalidArgument("linear_forward: starts must be (B, T) and h_reset (B, H)");
  const float* p = ps.typed_data();
  const float* valid = mask.typed_data();
  const float* decay = gamma.typed_data();
  const float* b = bias.typed_data();
  const float* h_first = h0.typed_data();
  float* hs_out = hs->typed_data();
  constexpr int64_t block = kForwardVectors * kLanes;
  over_rows(batch, [=, &resets](int64_t first, int64_t rows) {
    for (int64_t seq = first; seq < first + rows; ++seq) {
      const int64_t row = seq * length * hidden;
      const float* steps = valid + seq * length;
      const float* h_seq = h_first + seq * hidden;
      int64_t c = 0;
      for (; c + block <= hidden; c += block) {
        forward_columns<kForwardVectors>(seq, c, length, hidden, p + row, steps, resets, decay, b, h_seq, hs_out + row);
      }
      for (; c + kLanes <= hidden; c += kLanes) {
        forward_columns<1>(seq, c, length, hidden, p + row, steps, resets, decay, b, h_seq, hs_out + row);
      }
      for (; c < hidden; ++c) forward_column(seq, c, length, hidden, p + row, steps, resets, decay, b, h_seq, hs_out + row);
    }
  });
  return ffi::Error::Success();
}

// What one sequence's backward loop reads and writes: the batch's hs (B, T, H) from the forward loop
// and h0 (B, H) (Resets::before picks the state before a step), and at the sequence's own rows dys
// (T, H), the mask's row (T), gamma (H), dh_last (H) -> dp (T, H), and the sums dh0, dgamma, db,
// d_reset (H).
struct BackwardRows {
  int64_t seq, length, width;
  const float* hs_all;
  const float* h0_all;
  const float* dys;
  const float* valid;
  const float* decay;
  const float* dh_last;
  float* dp;
  float* dh0;
  float* dgamma;
  float* db;
  float* d_reset;
};

// Columns [c0, c0 + V kLanes) of one sequence's backward loop, from its last step to its first:
//   dh += dy_t;  dp_t = dh;  dgamma += dh * h_{t-1};  db += dh;  dh <- gamma * dh,
// then at an episode's start dh goes to d_reset and is 0 before the step.
template <int V>
[[gnu::noinline]] void backward_columns(const BackwardRows& r, int64_t c0, const Resets& resets) {
  Vector dh[V], dg[V], db[V], g[V], reset_sum[V];
#pragma GCC unroll 16
  for (int j = 0; j < V; ++j) {
    dh[j] = load(r.dh_last + c0 + kLanes * j);
    g[j] = load(r.decay + c0 + kLanes * j);
    dg[j] = db[j] = reset_sum[j] = zeros();
  }
  for (int64_t t = r.length - 1; t >= 0; --t) {
    const int64_t at = t * r.width + c0;
    if (t > 2) {  // rows further back: the processor does not fetch a backward stream ahead
      prefetch(r.dys + at - 2 * r.width, V * kLanes);
      prefetch(r.hs_all + r.seq * r.length * r.width + at - 3 * r.width, V * kLanes);
    }
#pragma GCC unroll 16
    for (int j = 0; j < V; ++j) dh[j] = add(dh[j], load(r.dys + at + kLanes * j));
    if (r.valid[t] == 0.0f) {
#pragma GCC unroll 16
      for (int j = 0; j < V; ++j) store(r.dp + at + kLanes * j, zeros());
      continue;
    }
    const float* h_prev = resets.before(r.seq, t, r.hs_all, r.h0_all) + c0;
#pragma GCC unroll 16
    for (int j = 0; j < V; ++j) {
      store(r.dp + at + kLanes * j, dh[j]);
      dg[j] = multiply_add(dh[j], load(h_prev + kLanes * j), dg[j]);
      db[j] = add(db[j], dh[j]);
      dh[j] = multiply(g[j], dh[j]);
    }
    if (resets.at(r.seq, t)) {
#pragma GCC unroll 16
      for (int j = 0; j < V; ++j) {
        reset_sum[j] = add(reset_sum[j], dh[j]);
        dh[j] = zeros();
      }
    }
  }
#pragma GCC unroll 16
  for (int j = 0; j < V; ++j) {
    store(r.dh0 + c0 + kLanes * j, dh[j]);
    store(r.dgamma + c0 + kLanes * j, dg[j]);
    store(r.db + c0 + kLanes * j, db[j]);
    store(r.d_reset + c0 + kLanes * j, reset_sum[j]);
  }
}

// Column c of one sequence's backward loop, one number at a time (the columns past the last vector).
void backward_column(const BackwardRows& r, int64_t c, const Resets& resets) {
  float dh = r.dh_last[c], dg = 0.0f, db = 0.0f, reset_sum = 0.0f;
  for (int64_t t = r.length - 1; t >= 0; --t) {
    const int64_t at = t * r.width + c;
    dh += r.dys[at];
    if (r.valid[t] == 0.0f) {
      r.dp[at] = 0.0f;
      continue;
    }
    const float h_prev = resets.before(r.seq, t, r.hs_all, r.h0_all)[c];
    r.dp[at] = dh;
    dg += dh * h_prev;
    db += dh;
    dh *= r.decay[c];
    if (resets.at(r.seq, t)) {
      reset_sum += dh;
      dh = 0.0f;
    }
  }
  r.dh0[c] = dh;
  r.dgamma[c] = dg;
  r.db[c] = db;
  r.d_reset[c] = reset_sum;
}

// Shapes: hs (B, T, H) from the forward loop, dys (B, T, H), mask, starts (B, T) and h_reset (B,
// H) as there, gamma (H), h0 and dh_last (B, H) -> dp (B, T, H), dh0 (B, H), dgamma and db (B, H)
// (each sequence's own sums), d_reset (B, H) the reset state's gradient.
ffi::Error LinearBackwardImpl(ffi::Buffer<ffi::F32> hs, ffi::Buffer<ffi::F32> dys, ffi::Buffer<ffi::F32> mask,
                              ffi::Buffer<ffi::F32> starts, ffi::Buffer<ffi::F32> h_reset, ffi::Buffer<ffi::F32> gamma,
                              ffi::Buffer<ffi::F32> h0, ffi::Buffer<ffi::F32> dh_last,
                              ffi::ResultBuffer<ffi::F32> dp, ffi::ResultBuffer<ffi::F32> dh0,
                              ffi::ResultBuffer<ffi::F32> dgamma, ffi::ResultBuffer<ffi::F32> db,
                              ffi::ResultBuffer<ffi::F32> d_reset) {
  const auto dims = hs.dimensions();
  if (dims.size() != 3) return ffi::Error::InvalidArgument("linear_backward: hs must be (B, T, H)");
  const int64_t batch = dims[0], length = dims[1], hidden = dims[2];
  if (gamma.element_count() != static_cast<size_t>(hidden) || mask.element_count() != static_cast<size_t>(batch * length)) {
    return ffi::Error::InvalidArgument("linear_backward: gamma must be (H) and mask (B, T)");
  }
  const Resets resets(starts, mask, h_reset, batch, length, hidden);
  if (!resets.fits) return ffi::Error::InvalidArgument("linear_backward: starts must be (B, T) and h_reset (B, H)");
  const float* h_all = hs.typed_data();
  const float* dy = dys.typed_data();
  const float* valid = mask.typed_data();
  const float* decay = gamma.typed_data();
  const float* h_first = h0.typed_data();
  const float* dh_end = dh_last.typed_data();
  float* dp_out = dp->typed_data();
  float* dh_out = dh0->typed_data();
  float* dgamma_out = dgamma->typed_data();
  float* db_out = db->typed_data();
  float* d_reset_out = d_reset->typed_data();
  constexpr int64_t block = kBackwardVectors * kLanes;
  over_rows(batch, [=, &resets](int64_t first, int64_t rows) {
    for (int64_t seq = first; seq < first + rows; ++seq) {
      const int64_t row = seq * length * hidden, sums = seq * hidden;
      const BackwardRows r{seq, length, hidden, h_all, h_first, dy + row, valid + seq * length, decay,
                           dh_end + sums, dp_out + row, dh_out + sums, dgamma_out + sums, db_out + sums,
                           d_reset_out + sums};
      int64_t c = 0;
      for (; c + block <= hidden; c += block) backward_columns<kBackwardVectors>(r, c, resets);
      for (; c + kLanes <= hidden; c += kLanes) backward_columns<1>(r, c, resets);
      for (; c < hidden; ++c) backward_column(r, c, resets);
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(recurrax_linear_forward, LinearForwardImpl,
                              results<1>(arguments<7>(ffi::Ffi::Bind())));

XLA_FFI_DEFINE_HANDLER_SYMBOL(recurrax_linear_backward, LinearBackwardImpl,
                              results<5>(arguments<8>(ffi::Ffi::Bind())));
