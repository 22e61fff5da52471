// The LSTM's two loops over time as XLA custom calls on a CPU (see loops.h). Built and registered
// by recurrax/native/__init__.py.
//
// Forward, per sequence and step t (gates stacked i, f, g, o; sigma the logistic function):
//   z_t = W_ih x_t + W_hh h_{t-1} + b    (one product: [x_t, h_{t-1}] [W_ih^T; W_hh^T])
//   a_t = (sigma(z_i), sigma(z_f), tanh(z_g), sigma(z_o))
//   c_t = f * c_{t-1} + i * g,   h_t = o * tanh(c_t)
// Backward, from the last step to the first, with dh, dc the gradients carried to step t:
//   dh += dy_t;   dc += dh * o * (1 - tanh(c_t)^2)
//   dz_t = (dc * g, dc * c_{t-1}, dc * i, dh * tanh(c_t)) * (a(1 - a) or 1 - a^2 for g)
//   dh <- dz_t W_hh,   dc <- dc * f
// dz_t is written out (the weight gradients come from products over all steps, in XLA), and its
// sum over each sequence's steps (the bias's gradient). A masked step keeps h and c and outputs
// them as they are; backward it passes dh and dc on, with dz_t = 0. A step that starts an episode
// (loops.h: Resets) reads the reset states instead of h_{t-1} and c_{t-1}; backward, the gradients
// it passes back go to the reset states'.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "loops.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using namespace recurrax_native;

// The forward loop. Shapes: xs (B, T, I), mask (B, T) (1: the step runs; 0: it keeps the state),
// starts (B, T), h_reset and c_reset (B, H) (Resets), w_t (I + H, 4H) = [W_ih^T; W_hh^T], bias
// (4H), h0 and c0 (B, H); it writes the states hs (B, T, H), and either the gates (B, T, 4H) and cs
// (B, T, H) (training: the
// backward loop reads them) or, where gates_out is null (inference), only the last cell state
// c_last (B, H), the gates staying in a buffer of the thread's rows. Each step takes its input and
// recurrent products as one, [x_t, h_{t-1}] [W_ih^T; W_hh^T], from a buffer of the thread's rows
// that holds x_t beside h.
ffi::Error forward_loop(ffi::Buffer<ffi::F32> xs, ffi::Buffer<ffi::F32> mask, ffi::Buffer<ffi::F32> starts,
                        ffi::Buffer<ffi::F32> h_reset, ffi::Buffer<ffi::F32> c_reset, ffi::Buffer<ffi::F32> w_t,
                        ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> h0, ffi::Buffer<ffi::F32> c0,
                        int32_t projected, float* gates_out, float* hs_out, float* cs_out, float* c_last_out) {
  const auto dims = xs.dimensions();
  const auto w_dims = w_t.dimensions();
  if (dims.size() != 3 || w_dims.size() != 2) {
    return ffi::Error::InvalidArgument("lstm_forward: xs must be (B, T, I) and w_t (I + H, 4H)");
  }
  const int64_t batch = dims[0], length = dims[1], inputs = dims[2];
  const int64_t gate_width = w_dims[1], hidden = gate_width / 4;
  const int64_t x_width = projected ? 0 : inputs, joint = x_width + hidden;  // a row of the product
  if (w_dims[0] != joint || gate_width != 4 * hidden || hidden % 16 != 0 || (projected && inputs != gate_width)) {
    return ffi::Error::InvalidArgument(projected ? "lstm_forward: projected, xs must be (B, T, 4H) and w_t (H, 4H)"
                                                 : "lstm_forward: w_t must be (I + H, 4H) with H a multiple of 16");
  }
  if (bias.element_count() != static_cast<size_t>(gate_width)) {
    return ffi::Error::InvalidArgument("lstm_forward: bias must have 4H numbers");
  }
  if (mask.element_count() != static_cast<size_t>(batch * length)) {
    return ffi::Error::InvalidArgument("lstm_forward: mask must be (B, T)");
  }
  const Resets h_resets(starts, mask, h_reset, batch, length, hidden);
  const Resets c_resets(starts, mask, c_reset, batch, length, hidden);
  if (!h_resets.fits || !c_resets.fits) {
    return ffi::Error::InvalidArgument("lstm_forward: starts must be (B, T), h_reset and c_reset (B, H)");
  }
  const float* valid = mask.typed_data();
  const float* b = bias.typed_data();
  const float* x_in = xs.typed_data();
  const Panels w(w_t.typed_data(), joint, gate_width);
  const float* h_first = h0.typed_data();
  const float* c_first = c0.typed_data();
  over_rows(batch, [=, &w, &h_resets, &c_resets](int64_t first, int64_t rows) {
    if (rows == 0) return;
    std::vector<float> xh(rows * joint);  // row r: x_t (unless projected), then h_{t-1}
    std::vector<float> c(c_first + first * hidden, c_first + (first + rows) * hidden);
    std::vector<float> scratch(gates_out ? 0 : rows * gate_width);
    for (int64_t r = 0; r < rows; ++r) {
      std::memcpy(xh.data() + r * joint + x_width, h_first + (first + r) * hidden, hidden * sizeof(float));
    }
    const int64_t a_stride = gates_out ? length * gate_width : gate_width;  // between rows of a
    for (int64_t t = 0; t < length; ++t) {
      const float* projections = projected ? x_in + (first * length + t) * gate_width : nullptr;
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t seq = first + r;
        if (!projected) std::memcpy(xh.data() + r * joint, x_in + (seq * length + t) * inputs, inputs * sizeof(float));
        if (h_resets.at(seq, t)) {
          h_resets.restore(seq, xh.data() + r * joint + x_width);
          c_resets.restore(seq, c.data() + r * hidden);
        }
      }
      float* a = gates_out ? gates_out + first * a_stride + t * gate_width : scratch.data();
      matrix_product(rows, xh.data(), joint, w, projections, length * gate_width, b, a, a_stride);
      for (int64_t r = 0; r < rows; ++r) {
        float* ar = a + r * a_stride;
        for (int64_t n = 0; n < 2 * hidden; ++n) ar[n] = sigmoid_approx(ar[n]);
        for (int64_t n = 2 * hidden; n < 3 * hidden; ++n) ar[n] = tanh_approx(ar[n]);
        for (int64_t n = 3 * hidden; n < gate_width; ++n) ar[n] = sigmoid_approx(ar[n]);
        float* hr = xh.data() + r * joint + x_width;
        float* cr = c.data() + r * hidden;
        if (valid[(first + r) * length + t] != 0.0f) {  // a masked step keeps h and c
          for (int64_t k = 0; k < hidden; ++k) {
            const float cell = ar[hidden + k] * cr[k] + ar[k] * ar[2 * hidden + k];
            cr[k] = cell;
            hr[k] = ar[3 * hidden + k] * tanh_approx(cell);
          }
        }
        const int64_t at = ((first + r) * length + t) * hidden;
        std::memcpy(hs_out + at, hr, hidden * sizeof(float));
        if (cs_out) std::memcpy(cs_out + at, cr, hidden * sizeof(float));
      }
    }
    if (c_last_out) std::memcpy(c_last_out + first * hidden, c.data(), rows * hidden * sizeof(float));
  });
  return ffi::Error::Success();
}

// Training: -> gates (B, T, 4H), hs and cs (B, T, H).
ffi::Error LstmForwardImpl(ffi::Buffer<ffi::F32> xs, ffi::Buffer<ffi::F32> mask, ffi::Buffer<ffi::F32> starts,
                           ffi::Buffer<ffi::F32> h_reset, ffi::Buffer<ffi::F32> c_reset, ffi::Buffer<ffi::F32> w_t,
                           ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> h0, ffi::Buffer<ffi::F32> c0,
                           int32_t projected, ffi::ResultBuffer<ffi::F32> gates, ffi::ResultBuffer<ffi::F32> hs,
                           ffi::ResultBuffer<ffi::F32> cs) {
  return forward_loop(xs, mask, starts, h_reset, c_reset, w_t, bias, h0, c0, projected, gates->typed_data(),
                      hs->typed_data(), cs->typed_data(), nullptr);
}

// Inference: -> hs (B, T, H) and the last cell state (B, H).
ffi::Error LstmInferenceImpl(ffi::Buffer<ffi::F32> xs, ffi::Buffer<ffi::F32> mask, ffi::Buffer<ffi::F32> starts,
                             ffi::Buffer<ffi::F32> h_reset, ffi::Buffer<ffi::F32> c_reset, ffi::Buffer<ffi::F32> w_t,
                             ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> h0, ffi::Buffer<ffi::F32> c0,
                             int32_t projected, ffi::ResultBuffer<ffi::F32> hs, ffi::ResultBuffer<ffi::F32> c_last) {
  return forward_loop(xs, mask, starts, h_reset, c_reset, w_t, bias, h0, c0, projected, nullptr, hs->typed_data(),
                      nullptr, c_last->typed_data());
}

// One sequence's step of the backward loop, elementwise: the pre-activation gradients dz from the
// gate activations a, the cell states c (after the step) and c_prev (before it), the output's
// gradient dy and the carried dh, dc; dc is replaced by the gradient for c_prev.
void backward_gates(int64_t hidden, const float* __restrict a, const float* __restrict c,
                    const float* __restrict c_prev, const float* __restrict dy, const float* __restrict dh,
                    float* __restrict dc, float* __restrict dz) {
  for (int64_t k = 0; k < hidden; ++k) {
    const float i = a[k], f = a[hidden + k], g = a[2 * hidden + k], o = a[3 * hidden + k];
    const float tc = tanh_approx(c[k]);
    const float dhk = dh[k] + dy[k];
    const float dck = dc[k] + dhk * o * (1.0f - tc * tc);
    dz[k] = dck * g * i * (1.0f - i);
    dz[hidden + k] = dck * c_prev[k] * f * (1.0f - f);
    dz[2 * hidden + k] = dck * i * (1.0f - g * g);
    dz[3 * hidden + k] = dhk * tc * o * (1.0f - o);
    dc[k] = dck * f;
  }
}

// Shapes: gates (B, T, 4H), cs (B, T, H), dys (B, T, H), mask (B, T), starts (B, T) and c_reset
// (B, H) as there, dh_last and dc_last (B, H), c0 (B, H), w_hh (4H, H) -> dz (B, T, 4H), dh0 and
// dc0 (B, H), db (B, 4H): the sum of each sequence's dz over its steps (the bias's gradient, per
// sequence), dh_reset and dc_reset (B, H): the reset states' gradients. A masked step passes dh and
// dc on unchanged and has dz = 0.
ffi::Error LstmBackwardImpl(ffi::Buffer<ffi::F32> gates, ffi::Buffer<ffi::F32> cs, ffi::Buffer<ffi::F32> dys,
                            ffi::Buffer<ffi::F32> mask, ffi::Buffer<ffi::F32> starts, ffi::Buffer<ffi::F32> c_reset,
                            ffi::Buffer<ffi::F32> dh_last, ffi::Buffer<ffi::F32> dc_last, ffi::Buffer<ffi::F32> c0,
                            ffi::Buffer<ffi::F32> w_hh, ffi::ResultBuffer<ffi::F32> dz,
                            ffi::ResultBuffer<ffi::F32> dh0, ffi::ResultBuffer<ffi::F32> dc0,
                            ffi::ResultBuffer<ffi::F32> db, ffi::ResultBuffer<ffi::F32> dh_reset,
                            ffi::ResultBuffer<ffi::F32> dc_reset) {
  const auto dims = gates.dimensions();
  if (dims.size() != 3) return ffi::Error::InvalidArgument("lstm_backward: gates must be (B, T, 4H)");
  const int64_t batch = dims[0], length = dims[1], gate_width = dims[2], hidden = gate_width / 4;
  if (w_hh.dimensions().size() != 2 || w_hh.dimensions()[0] != gate_width || w_hh.dimensions()[1] != hidden ||
      hidden % 16 != 0) {
    return ffi::Error::InvalidArgument("lstm_backward: w_hh must be (4H, H) with H a multiple of 16");
  }
  const float* a_in = gates.typed_data();
  const float* c_in = cs.typed_data();
  const float* dy = dys.typed_data();
  if (mask.element_count() != static_cast<size_t>(batch * length)) {
    return ffi::Error::InvalidArgument("lstm_backward: mask must be (B, T)");
  }
  const Resets resets(starts, mask, c_reset, batch, length, hidden);
  if (!resets.fits) return ffi::Error::InvalidArgument("lstm_backward: starts must be (B, T) and c_reset (B, H)");
  float* dh_reset_out = dh_reset->typed_data();
  float* dc_reset_out = dc_reset->typed_data();
  const float* valid = mask.typed_data();
  const Panels w(w_hh.typed_data(), gate_width, hidden);
  const float* c_first = c0.typed_data();
  const float* dh_end = dh_last.typed_data();
  const float* dc_end = dc_last.typed_data();
  float* dz_out = dz->typed_data();
  float* dh_out = dh0->typed_data();
  float* dc_out = dc0->typed_data();
  float* db_out = db->typed_data();
  over_rows(batch, [=, &w, &resets](int64_t first, int64_t rows) {
    if (rows == 0) return;
    std::vector<float> dh(dh_end + first * hidden, dh_end + (first + rows) * hidden);
    std::vector<float> dc(dc_end + first * hidden, dc_end + (first + rows) * hidden);
    std::vector<float> bias_sum(rows * gate_width, 0.0f);
    std::vector<float> h_reset_sum(rows * hidden, 0.0f), c_reset_sum(rows * hidden, 0.0f);
    std::vector<float> passed(rows * hidden);  // dh + dy of a masked step's row, kept past the product
    const int64_t gate_stride = length * gate_width, state_stride = length * hidden;
    for (int64_t t = length - 1; t >= 0; --t) {
      float* dzt = dz_out + first * gate_stride + t * gate_width;
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t seq = first + r;
        const float* ar = a_in + seq * gate_stride + t * gate_width;
        const float* cr = c_in + seq * state_stride + t * hidden;
        const float* c_prev = resets.before(seq, t, c_in, c_first);
        const float* dyr = dy + seq * state_stride + t * hidden;
        float* dhr = dh.data() + r * hidden;
        float* dcr = dc.data() + r * hidden;
        float* dzr = dzt + r * gate_stride;
        if (valid[seq * length + t] == 0.0f) {
          std::fill(dzr, dzr + gate_width, 0.0f);
          for (int64_t k = 0; k < hidden; ++k) passed[r * hidden + k] = dhr[k] + dyr[k];
          continue;
        }
        backward_gates(hidden, ar, cr, c_prev, dyr, dhr, dcr, dzr);
        if (resets.at(seq, t)) Resets::pass_to_reset(dcr, c_reset_sum.data() + r * hidden, hidden);
        float* sum = bias_sum.data() + r * gate_width;
        for (int64_t n = 0; n < gate_width; ++n) sum[n] += dzr[n];
      }
      // dh <- dz_t W_hh for this thread's rows; a masked step's row passes its dh on.
      matrix_product(rows, dzt, gate_stride, w, nullptr, 0, nullptr, dh.data(), hidden);
      for (int64_t r = 0; r < rows; ++r) {
        if (valid[(first + r) * length + t] == 0.0f) {
          std::memcpy(dh.data() + r * hidden, passed.data() + r * hidden, hidden * sizeof(float));
        }
      }
      resets.pass_back(first, rows, t, dh.data(), h_reset_sum.data());
    }
    std::memcpy(dh_out + first * hidden, dh.data(), rows * hidden * sizeof(float));
    std::memcpy(dc_out + first * hidden, dc.data(), rows * hidden * sizeof(float));
    std::memcpy(db_out + first * gate_width, bias_sum.data(), rows * gate_width * sizeof(float));
    std::memcpy(dh_reset_out + first * hidden, h_reset_sum.data(), rows * hidden * sizeof(float));
    std::memcpy(dc_reset_out + first * hidden, c_reset_sum.data(), rows * hidden * sizeof(float));
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(recurrax_lstm_forward, LstmForwardImpl,
                              results<3>(arguments<9>(ffi::Ffi::Bind()).Attr<int32_t>("projected")));

XLA_FFI_DEFINE_HANDLER_SYMBOL(recurrax_lstm_inference, LstmInferenceImpl,
                              results<2>(arguments<9>(ffi::Ffi::Bind()).Attr<int32_t>("projected")));

XLA_FFI_DEFINE_HANDLER_SYMBOL(recurrax_lstm_backward, LstmBackwardImpl,
                              results<6>(arguments<10>(ffi::Ffi::Bind())));
