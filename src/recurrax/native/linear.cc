// The loops over time of the linear recurrence with forgetting (LinearRecurrence) as XLA custom
// calls on a CPU (see loops.h): no product in the loop, only the state's decay; XLA computes the
// input products W x_t before it. Built and registered by recurrax/native/__init__.py.
//
// Forward, per sequence and step t:   h_t = gamma * h_{t-1} + (W x_t + b)
// Backward, from the last step to the first, with dh the gradient carried to step t:
//   dh += dy_t;   dp_t = dh;   dgamma += dh * h_{t-1};   db += dh;   dh <- gamma * dh
// A masked step keeps h and outputs it as it is; backward it passes dh on, with dp_t = 0. A step
// that starts an episode (loops.h: Resets) reads the reset state instead of h_{t-1}; backward, the
// gradient it passes back goes to the reset state's.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "loops.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using namespace recurrax_native;

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
  over_rows(batch, [=, &resets](int64_t first, int64_t rows) {
    std::vector<float> h(hidden);
    for (int64_t seq = first; seq < first + rows; ++seq) {
      std::memcpy(h.data(), h_first + seq * hidden, hidden * sizeof(float));
      for (int64_t t = 0; t < length; ++t) {
        const int64_t at = (seq * length + t) * hidden;
        if (valid[seq * length + t] != 0.0f) {
          if (resets.at(seq, t)) resets.restore(seq, h.data());
          for (int64_t k = 0; k < hidden; ++k) h[k] = decay[k] * h[k] + (p[at + k] + b[k]);
        }
        std::memcpy(hs_out + at, h.data(), hidden * sizeof(float));
      }
    }
  });
  return ffi::Error::Success();
}

// A backward step of one sequence (n numbers; its own function, so that the pointers are known
// not to overlap and the loop is vectorised):  dp = dh;  dgamma += dh * h_prev;  db += dh;  dh *= gamma.
void backward_step(int64_t n, const float* __restrict h_prev, const float* __restrict gamma, float* __restrict dh,
                   float* __restrict dp, float* __restrict dgamma, float* __restrict db) {
  for (int64_t k = 0; k < n; ++k) {
    dp[k] = dh[k];
    dgamma[k] += dh[k] * h_prev[k];
    db[k] += dh[k];
    dh[k] *= gamma[k];
  }
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
  float* d_reset_out = d_reset->typed_data();
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
  over_rows(batch, [=, &resets](int64_t first, int64_t rows) {
    std::vector<float> dh(hidden), dg(hidden), bias_sum(hidden), reset_sum(hidden);
    for (int64_t seq = first; seq < first + rows; ++seq) {
      std::memcpy(dh.data(), dh_end + seq * hidden, hidden * sizeof(float));
      std::fill(dg.begin(), dg.end(), 0.0f);
      std::fill(bias_sum.begin(), bias_sum.end(), 0.0f);
      std::fill(reset_sum.begin(), reset_sum.end(), 0.0f);
      for (int64_t t = length - 1; t >= 0; --t) {
        const int64_t at = (seq * length + t) * hidden;
        float* dpt = dp_out + at;
        if (t > 2) {  // rows further back: the processor does not fetch a backward stream ahead
          prefetch(dy + at - 2 * hidden, hidden);
          prefetch(h_all + at - 3 * hidden, hidden);
          prefetch_for_writing(dpt - 2 * hidden, hidden);
        }
        for (int64_t k = 0; k < hidden; ++k) dh[k] += dy[at + k];
        if (valid[seq * length + t] == 0.0f) {
          std::fill(dpt, dpt + hidden, 0.0f);
          continue;
        }
        backward_step(hidden, resets.before(seq, t, h_all, h_first), decay, dh.data(), dpt, dg.data(),
                      bias_sum.data());
        if (resets.at(seq, t)) Resets::pass_to_reset(dh.data(), reset_sum.data(), hidden);
      }
      std::memcpy(dh_out + seq * hidden, dh.data(), hidden * sizeof(float));
      std::memcpy(d_reset_out + seq * hidden, reset_sum.data(), hidden * sizeof(float));
      std::memcpy(dgamma_out + seq * hidden, dg.data(), hidden * sizeof(float));
      std::memcpy(db_out + seq * hidden, bias_sum.data(), hidden * sizeof(float));
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(recurrax_linear_forward, LinearForwardImpl,
                              results<1>(arguments<7>(ffi::Ffi::Bind())));

XLA_FFI_DEFINE_HANDLER_SYMBOL(recurrax_linear_backward, LinearBackwardImpl,
                              results<5>(arguments<8>(ffi::Ffi::Bind())));
