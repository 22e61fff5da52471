// The Elman network's two loops over time as XLA custom calls on a CPU (see loops.h). Built and
// registered by recurrax/native/__init__.py.
//
// Forward, per sequence and step t (sigma the network's activation, numbered as in loops.h):
//   h_t = sigma(W_hx x_t + W_hh h_{t-1} + b)    (one product: [x_t, h_{t-1}] [W_hx^T; W_hh^T])
// Backward, from the last step to the first, with dh the gradient carried to step t:
//   dh += dy_t;   dz_t = dh * sigma'(z_t) (from h_t);   dh <- dz_t W_hh
// dz_t is written out (the weight gradients come from products over all steps, in XLA), and its
// sum over each sequence's steps (the bias's gradient). A masked step keeps h and outputs it as
// it is; backward it passes dh on, with dz_t = 0. A step that starts an episode (loops.h: Resets)
// reads the reset state instead of h_{t-1}; backward, the gradient it passes back goes to the
// reset state's.

#include <cstdint>
#include <cstring>
#include <vector>

#include "loops.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using namespace recurrax_native;

// Shapes: xs (B, T, I), mask (B, T) (1: the step runs; 0: it keeps the state), starts (B, T) and
// h_reset (B, H) (Resets), w_t (I + H, H) = [W_hx^T; W_hh^T], bias (H), h0 (B, H) -> the states
// hs (B, T, H), which are all the backward loop needs. With `projected`, xs (B, T, H) holds the
// input products W_hx x_t already and w_t (H, H) is W_hh^T.
ffi::Error ElmanForwardImpl(ffi::Buffer<ffi::F32> xs, ffi::Buffer<ffi::F32> mask, ffi::Buffer<ffi::F32> starts,
                            ffi::Buffer<ffi::F32> h_reset, ffi::Buffer<ffi::F32> w_t, ffi::Buffer<ffi::F32> bias,
                            ffi::Buffer<ffi::F32> h0, int32_t activation, int32_t projected,
                            ffi::ResultBuffer<ffi::F32> hs) {
  const auto dims = xs.dimensions();
  const auto w_dims = w_t.dimensions();
  if (dims.size() != 3 || w_dims.size() != 2) {
    return ffi::Error::InvalidArgument("elman_forward: xs must be (B, T, I) and w_t (I + H, H)");
  }
  const int64_t batch = dims[0], length = dims[1], inputs = dims[2], hidden = w_dims[1];
  const int64_t x_width = projected ? 0 : inputs, joint = x_width + hidden;  // a row of the product
  if (w_dims[0] != joint || hidden % 16 != 0 || (projected && inputs != hidden)) {
    return ffi::Error::InvalidArgument(projected ? "elman_forward: projected, xs must be (B, T, H) and w_t (H, H)"
                                                 : "elman_forward: w_t must be (I + H, H) with H a multiple of 16");
  }
  if (bias.element_count() != static_cast<size_t>(hidden) || h0.element_count() != static_cast<size_t>(batch * hidden)) {
    return ffi::Error::InvalidArgument("elman_forward: bias must be (H) and h0 (B, H)");
  }
  if (mask.element_count() != static_cast<size_t>(batch * length)) {
    return ffi::Error::InvalidArgument("elman_forward: mask must be (B, T)");
  }
  if (!known_activation(activation)) return ffi::Error::InvalidArgument("elman_forward: unknown activation");
  const Resets resets(starts, mask, h_reset, batch, length, hidden);
  if (!resets.fits) return ffi::Error::InvalidArgument("elman_forward: starts must be (B, T) and h_reset (B, H)");
  const float* valid = mask.typed_data();
  const float* b = bias.typed_data();
  const float* x_in = xs.typed_data();
  const float* h_first = h0.typed_data();
  float* hs_out = hs->typed_data();
  const Panels w(w_t.typed_data(), joint, hidden);
  over_rows(batch, [=, &w, &resets](int64_t first, int64_t rows) {
    if (rows == 0) return;
    std::vector<float> xh(rows * joint);  // row r: x_t (unless projected), then h_{t-1}
    std::vector<float> z(rows * hidden);
    for (int64_t r = 0; r < rows; ++r) {
      std::memcpy(xh.data() + r * joint + x_width, h_first + (first + r) * hidden, hidden * sizeof(float));
    }
    for (int64_t t = 0; t < length; ++t) {
      for (int64_t r = 0; r < rows; ++r) {
        const float* x = x_in + ((first + r) * length + t) * inputs;
        if (!projected) std::memcpy(xh.data() + r * joint, x, inputs * sizeof(float));
        if (t + 1 < length) prefetch(x + inputs, inputs);
        const int64_t seq = first + r;
        if (resets.at(seq, t)) resets.restore(seq, xh.data() + r * joint + x_width);
      }
      const float* projections = projected ? x_in + (first * length + t) * hidden : nullptr;
      matrix_product(rows, xh.data(), joint, w, projections, length * hidden, b, z.data(), hidden);
      for (int64_t r = 0; r < rows; ++r) {
        float* hr = xh.data() + r * joint + x_width;
        if (valid[(first + r) * length + t] != 0.0f) {  // a masked step keeps h
          float* zr = z.data() + r * hidden;
          activate(activation, zr, hidden);
          std::memcpy(hr, zr, hidden * sizeof(float));
        }
        float* h_out = hs_out + ((first + r) * length + t) * hidden;
        std::memcpy(h_out, hr, hidden * sizeof(float));
        if (t + 1 < length) prefetch_for_writing(h_out + hidden, hidden);
      }
    }
  });
  return ffi::Error::Success();
}

// Shapes: hs (B, T, H) from the forward loop, dys (B, T, H), mask (B, T), starts (B, T) as there,
// dh_last (B, H), w_hh (H, H) as the cell stores it -> dz (B, T, H), dh0 (B, H), db (B, H): the sum
// of each sequence's dz over its steps (the bias's gradient, per sequence), d_reset (B, H): the
// reset state's gradient.
ffi::Error ElmanBackwardImpl(ffi::Buffer<ffi::F32> hs, ffi::Buffer<ffi::F32> dys, ffi::Buffer<ffi::F32> mask,
                             ffi::Buffer<ffi::F32> starts, ffi::Buffer<ffi::F32> dh_last, ffi::Buffer<ffi::F32> w_hh,
                             int32_t activation, ffi::ResultBuffer<ffi::F32> dz, ffi::ResultBuffer<ffi::F32> dh0,
                             ffi::ResultBuffer<ffi::F32> db, ffi::ResultBuffer<ffi::F32> d_reset) {
  const auto dims = hs.dimensions();
  if (dims.size() != 3) return ffi::Error::InvalidArgument("elman_backward: hs must be (B, T, H)");
  const int64_t batch = dims[0], length = dims[1], hidden = dims[2];
  if (w_hh.dimensions().size() != 2 || w_hh.dimensions()[0] != hidden || w_hh.dimensions()[1] != hidden ||
      hidden % 16 != 0) {
    return ffi::Error::InvalidArgument("elman_backward: w_hh must be (H, H) with H a multiple of 16");
  }
  if (mask.element_count() != static_cast<size_t>(batch * length)) {
    return ffi::Error::InvalidArgument("elman_backward: mask must be (B, T)");
  }
  if (!known_activation(activation)) return ffi::Error::InvalidArgument("elman_backward: unknown activation");
  const Resets resets(starts, mask, batch, length, hidden);
  if (!resets.fits) return ffi::Error::InvalidArgument("elman_backward: starts must be (B, T)");
  float* d_reset_out = d_reset->typed_data();
  const float* h_in = hs.typed_data();
  const float* dy = dys.typed_data();
  const float* valid = mask.typed_data();
  const float* dh_end = dh_last.typed_data();
  float* dz_out = dz->typed_data();
  float* dh_out = dh0->typed_data();
  float* db_out = db->typed_data();
  const Panels w(w_hh.typed_data(), hidden, hidden);
  over_rows(batch, [=, &w, &resets](int64_t first, int64_t rows) {
    if (rows == 0) return;
    std::vector<float> dh(dh_end + first * hidden, dh_end + (first + rows) * hidden);
    std::vector<float> passed(rows * hidden);  // dh + dy on a masked step's row, 0 on the others
    std::vector<float> bias_sum(rows * hidden, 0.0f);
    std::vector<float> reset_sum(rows * hidden, 0.0f);
    const int64_t stride = length * hidden;
    for (int64_t t = length - 1; t >= 0; --t) {
      float* dzt = dz_out + first * stride + t * hidden;
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t at = (first + r) * stride + t * hidden;
        float* dhr = dh.data() + r * hidden;
        float* dzr = dzt + r * stride;
        float* passing = passed.data() + r * hidden;
        if (t > 0) {  // the step before's rows
          prefetch(dy + at - hidden, hidden);
          prefetch(h_in + at - hidden, hidden);
          prefetch_for_writing(dzr - hidden, hidden);
        }
        for (int64_t k = 0; k < hidden; ++k) dhr[k] += dy[at + k];
        if (valid[(first + r) * length + t] == 0.0f) {
          std::fill(dzr, dzr + hidden, 0.0f);
          std::memcpy(passing, dhr, hidden * sizeof(float));
          continue;
        }
        std::fill(passing, passing + hidden, 0.0f);
        through_activation(activation, h_in + at, dhr, dzr, hidden);
        float* sum = bias_sum.data() + r * hidden;
        for (int64_t k = 0; k < hidden; ++k) sum[k] += dzr[k];
      }
      // dh <- dz_t W_hh, plus what a masked step's row passes on.
      matrix_product(rows, dzt, stride, w, passed.data(), hidden, nullptr, dh.data(), hidden);
      resets.pass_back(first, rows, t, dh.data(), reset_sum.data());
    }
    std::memcpy(dh_out + first * hidden, dh.data(), rows * hidden * sizeof(float));
    std::memcpy(db_out + first * hidden, bias_sum.data(), rows * hidden * sizeof(float));
    std::memcpy(d_reset_out + first * hidden, reset_sum.data(), rows * hidden * sizeof(float));
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    recurrax_elman_forward, ElmanForwardImpl,
    results<1>(arguments<7>(ffi::Ffi::Bind()).Attr<int32_t>("activation").Attr<int32_t>("projected")));

XLA_FFI_DEFINE_HANDLER_SYMBOL(recurrax_elman_backward, ElmanBackwardImpl,
                              results<4>(arguments<6>(ffi::Ffi::Bind()).Attr<int32_t>("activation")));
