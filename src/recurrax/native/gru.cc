// The GRU's two loops over time as XLA custom calls on a CPU (see loops.h). Built and registered
// by recurrax/native/__init__.py.
//
// Forward, per sequence and step t (gates stacked r, z, n; sigma the logistic function):
//   p_t = W_ih x_t + b,   g_t = W_hh h_{t-1} + (0, 0, b_hn)     (two products)
//   r, z = sigma(p_r + g_r), sigma(p_z + g_z)
//   n = tanh(p_n + r * g_n),   h_t = n + z * (h_{t-1} - n)
// Backward, from the last step to the first, with dh the gradient carried to step t (dh += dy_t):
//   dn = dh * (1 - z) * (1 - n^2)
//   dr = dn * g_n * r (1 - r),   dz = dh * (h_{t-1} - n) * z (1 - z),   dg_n = dn * r
//   dh <- dh * z + [dr, dz, dg_n] W_hh
// [dr, dz], dn and dg_n are written out (the weight gradients come from products over all steps,
// in XLA), and their sums over each sequence's steps (the biases' gradients). A masked step keeps
// h and outputs it as it is; backward it passes dh on, with all of them 0. A step that starts an
// episode (loops.h: Resets) reads the reset state instead of h_{t-1}; backward, the gradient it
// passes back goes to the reset state's.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "loops.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using namespace recurrax_native;

// Shapes: xs (B, T, I), mask (B, T) (1: the step runs; 0: it keeps the state), starts (B, T) and
// h_reset (B, H) (Resets), w_ih_t (I, 3H) and w_hh_t (H, 3H) the matrices transposed, bias (3H),
// bias_hn (H), h0 (B, H). With `projected`, xs (B, T, 3H) holds the input products W_ih x_t
// already (w_ih_t is not read). Writes the states hs (B, T, H) and, where gates_out is not null
// (training), (r, z, n, g_n) (B, T, 4H).
ffi::Error forward_loop(ffi::Buffer<ffi::F32> xs, ffi::Buffer<ffi::F32> mask, ffi::Buffer<ffi::F32> starts,
                        ffi::Buffer<ffi::F32> h_reset, ffi::Buffer<ffi::F32> w_ih_t, ffi::Buffer<ffi::F32> w_hh_t,
                        ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> bias_hn, ffi::Buffer<ffi::F32> h0,
                        int32_t projected, float* hs_out, float* gates_out) {
  const auto dims = xs.dimensions();
  const auto ih_dims = w_ih_t.dimensions();
  const auto hh_dims = w_hh_t.dimensions();
  if (dims.size() != 3 || ih_dims.size() != 2 || hh_dims.size() != 2) {
    return ffi::Error::InvalidArgument("gru_forward: xs must be (B, T, I), w_ih_t (I, 3H) and w_hh_t (H, 3H)");
  }
  const int64_t batch = dims[0], length = dims[1], inputs = dims[2], width = hh_dims[1], hidden = width / 3;
  if (ih_dims[1] != width || hh_dims[0] != hidden || width != 3 * hidden || hidden % 16 != 0 ||
      (projected ? inputs != width : ih_dims[0] != inputs)) {
    return ffi::Error::InvalidArgument(projected ? "gru_forward: projected, xs must be (B, T, 3H) and w_hh_t (H, 3H)"
                                                 : "gru_forward: w_ih_t must be (I, 3H) and w_hh_t (H, 3H) with H a "
                                                   "multiple of 16");
  }
  if (bias.element_count() != static_cast<size_t>(width) || bias_hn.element_count() != static_cast<size_t>(hidden) ||
      h0.element_count() != static_cast<size_t>(batch * hidden)) {
    return ffi::Error::InvalidArgument("gru_forward: bias must be (3H), bias_hn (H) and h0 (B, H)");
  }
  if (mask.element_count() != static_cast<size_t>(batch * length)) {
    return ffi::Error::InvalidArgument("gru_forward: mask must be (B, T)");
  }
  const Resets resets(starts, mask, h_reset, batch, length, hidden);
  if (!resets.fits) return ffi::Error::InvalidArgument("gru_forward: starts must be (B, T) and h_reset (B, H)");
  const float* valid = mask.typed_data();
  const float* x_in = xs.typed_data();
  const float* h_first = h0.typed_data();
  const float* b = bias.typed_data();
  std::vector<float> recurrent_bias(width, 0.0f);  // (0, 0, b_hn)
  std::memcpy(recurrent_bias.data() + 2 * hidden, bias_hn.typed_data(), hidden * sizeof(float));
  const float* b_hh = recurrent_bias.data();
  const Panels w_ih(w_ih_t.typed_data(), projected ? 0 : inputs, width);  // empty where not read
  const Panels w_hh(w_hh_t.typed_data(), hidden, width);
  over_rows(batch, [=, &w_ih, &w_hh, &resets](int64_t first, int64_t rows) {
    if (rows == 0) return;
    std::vector<float> x(projected ? 0 : rows * inputs), h(h_first + first * hidden, h_first + (first + rows) * hidden);
    std::vector<float> p(rows * width), g(rows * width), scratch(gates_out ? 0 : rows * 4 * hidden);
    for (int64_t t = 0; t < length; ++t) {
      for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x_in + ((first + r) * length + t) * inputs;
        if (projected) {
          for (int64_t k = 0; k < width; ++k) p[r * width + k] = xr[k] + b[k];
        } else {
          std::memcpy(x.data() + r * inputs, xr, inputs * sizeof(float));
        }
        if (t + 1 < length) {  // the next step's rows
          const int64_t next = (first + r) * length + t + 1;
          prefetch(xr + inputs, inputs);
          prefetch_for_writing(hs_out + next * hidden, hidden);
          if (gates_out) prefetch_for_writing(gates_out + next * 4 * hidden, 4 * hidden);
        }
        const int64_t seq = first + r;
        if (resets.at(seq, t)) resets.restore(seq, h.data() + r * hidden);
      }
      if (!projected) matrix_product(rows, x.data(), inputs, w_ih, nullptr, 0, b, p.data(), width);
      matrix_product(rows, h.data(), hidden, w_hh, nullptr, 0, b_hh, g.data(), width);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t seq = first + r;
        float* __restrict a = gates_out ? gates_out + (seq * length + t) * 4 * hidden : scratch.data() + r * 4 * hidden;
        const float* __restrict pr = p.data() + r * width;
        const float* __restrict gr = g.data() + r * width;
        float* __restrict hr = h.data() + r * hidden;
        for (int64_t k = 0; k < 2 * hidden; ++k) a[k] = sigmoid_approx(pr[k] + gr[k]);
        for (int64_t k = 0; k < hidden; ++k) {
          const float gn = gr[2 * hidden + k];
          a[2 * hidden + k] = tanh_approx(pr[2 * hidden + k] + a[k] * gn);
          a[3 * hidden + k] = gn;
        }
        if (valid[seq * length + t] != 0.0f) {  // a masked step keeps h
          for (int64_t k = 0; k < hidden; ++k) {
            const float n = a[2 * hidden + k];
            hr[k] = n + a[hidden + k] * (hr[k] - n);
          }
        }
        std::memcpy(hs_out + (seq * length + t) * hidden, hr, hidden * sizeof(float));
      }
    }
  });
  return ffi::Error::Success();
}

// Training: -> hs (B, T, H) and (r, z, n, g_n) (B, T, 4H).
ffi::Error GruForwardImpl(ffi::Buffer<ffi::F32> xs, ffi::Buffer<ffi::F32> mask, ffi::Buffer<ffi::F32> starts,
                          ffi::Buffer<ffi::F32> h_reset, ffi::Buffer<ffi::F32> w_ih_t, ffi::Buffer<ffi::F32> w_hh_t,
                          ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> bias_hn, ffi::Buffer<ffi::F32> h0,
                          int32_t projected, ffi::ResultBuffer<ffi::F32> hs, ffi::ResultBuffer<ffi::F32> gates) {
  return forward_loop(xs, mask, starts, h_reset, w_ih_t, w_hh_t, bias, bias_hn, h0, projected, hs->typed_data(),
                      gates->typed_data());
}

// Inference: -> hs (B, T, H) only.
ffi::Error GruInferenceImpl(ffi::Buffer<ffi::F32> xs, ffi::Buffer<ffi::F32> mask, ffi::Buffer<ffi::F32> starts,
                            ffi::Buffer<ffi::F32> h_reset, ffi::Buffer<ffi::F32> w_ih_t,
                            ffi::Buffer<ffi::F32> w_hh_t, ffi::Buffer<ffi::F32> bias,
                            ffi::Buffer<ffi::F32> bias_hn, ffi::Buffer<ffi::F32> h0, int32_t projected,
                            ffi::ResultBuffer<ffi::F32> hs) {
  return forward_loop(xs, mask, starts, h_reset, w_ih_t, w_hh_t, bias, bias_hn, h0, projected, hs->typed_data(),
                      nullptr);
}

// Shapes: hs (B, T, H) and gates (B, T, 4H) from the forward loop, dys (B, T, H), mask, starts (B,
// T) and h_reset (B, H) as there, dh_last and h0 (B, H), w_hh (3H, H) as the cell stores it ->
// d_rz (B, T, 2H), dn and dg_n (B, T, H), dh0 (B, H), db (B, 3H) (each sequence's sums of d_rz and
// dn over its steps), db_hn (B, H) (of dg_n) and d_reset (B, H) (the reset state's gradient).
ffi::Error GruBackwardImpl(ffi::Buffer<ffi::F32> hs, ffi::Buffer<ffi::F32> gates, ffi::Buffer<ffi::F32> dys,
                           ffi::Buffer<ffi::F32> mask, ffi::Buffer<ffi::F32> starts, ffi::Buffer<ffi::F32> h_reset,
                           ffi::Buffer<ffi::F32> dh_last, ffi::Buffer<ffi::F32> h0, ffi::Buffer<ffi::F32> w_hh,
                           ffi::ResultBuffer<ffi::F32> d_rz, ffi::ResultBuffer<ffi::F32> dn,
                           ffi::ResultBuffer<ffi::F32> dgn, ffi::ResultBuffer<ffi::F32> dh0,
                           ffi::ResultBuffer<ffi::F32> db, ffi::ResultBuffer<ffi::F32> db_hn,
                           ffi::ResultBuffer<ffi::F32> d_reset) {
  const auto dims = hs.dimensions();
  if (dims.size() != 3) return ffi::Error::InvalidArgument("gru_backward: hs must be (B, T, H)");
  const int64_t batch = dims[0], length = dims[1], hidden = dims[2], width = 3 * hidden;
  if (w_hh.dimensions().size() != 2 || w_hh.dimensions()[0] != width || w_hh.dimensions()[1] != hidden ||
      hidden % 16 != 0) {
    return ffi::Error::InvalidArgument("gru_backward: w_hh must be (3H, H) with H a multiple of 16");
  }
  if (mask.element_count() != static_cast<size_t>(batch * length) ||
      gates.element_count() != static_cast<size_t>(batch * length * 4 * hidden)) {
    return ffi::Error::InvalidArgument("gru_backward: mask must be (B, T) and gates (B, T, 4H)");
  }
  const Resets resets(starts, mask, h_reset, batch, length, hidden);
  if (!resets.fits) return ffi::Error::InvalidArgument("gru_backward: starts must be (B, T) and h_reset (B, H)");
  float* d_reset_out = d_reset->typed_data();
  const float* h_all = hs.typed_data();
  const float* a_all = gates.typed_data();
  const float* dy = dys.typed_data();
  const float* valid = mask.typed_data();
  const float* dh_end = dh_last.typed_data();
  const float* h_first = h0.typed_data();
  float* d_rz_out = d_rz->typed_data();
  float* dn_out = dn->typed_data();
  float* dgn_out = dgn->typed_data();
  float* dh_out = dh0->typed_data();
  float* db_out = db->typed_data();
  float* db_hn_out = db_hn->typed_data();
  const Panels w(w_hh.typed_data(), width, hidden);
  over_rows(batch, [=, &w, &resets](int64_t first, int64_t rows) {
    if (rows == 0) return;
    std::vector<float> dh(dh_end + first * hidden, dh_end + (first + rows) * hidden);
    std::vector<float> dg(rows * width);      // [dr, dz, dg_n] of the step: the product's rows
    std::vector<float> direct(rows * hidden);  // dh * z, or a masked step's dh as it is
    std::vector<float> bias_sum(rows * width, 0.0f), bias_hn_sum(rows * hidden, 0.0f);
    std::vector<float> reset_sum(rows * hidden, 0.0f);
    for (int64_t t = length - 1; t >= 0; --t) {
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t seq = first + r, at = (seq * length + t) * hidden;
        const float* a = a_all + (seq * length + t) * 4 * hidden;
        float* __restrict dhr = dh.data() + r * hidden;
        float* __restrict dgr = dg.data() + r * width;
        float* __restrict dir = direct.data() + r * hidden;
        float* __restrict drz = d_rz_out + (seq * length + t) * 2 * hidden;
        float* __restrict dnr = dn_out + at;
        float* __restrict dgnr = dgn_out + at;
        if (t > 0) {  // the step before's rows
          prefetch(a - 4 * hidden, 4 * hidden);
          prefetch(dy + at - hidden, hidden);
          if (t > 1) prefetch(h_all + at - 2 * hidden, hidden);
          prefetch_for_writing(drz - 2 * hidden, 2 * hidden);
          prefetch_for_writing(dnr - hidden, hidden);
          prefetch_for_writing(dgnr - hidden, hidden);
        }
        for (int64_t k = 0; k < hidden; ++k) dhr[k] += dy[at + k];
        if (valid[seq * length + t] == 0.0f) {
          std::fill(dgr, dgr + width, 0.0f);
          std::fill(drz, drz + 2 * hidden, 0.0f);
          std::fill(dnr, dnr + hidden, 0.0f);
          std::fill(dgnr, dgnr + hidden, 0.0f);
          std::memcpy(dir, dhr, hidden * sizeof(float));
          continue;
        }
        const float* h_prev = resets.before(seq, t, h_all, h_first);
        float* sum = bias_sum.data() + r * width;
        float* sum_hn = bias_hn_sum.data() + r * hidden;
        for (int64_t k = 0; k < hidden; ++k) {
          const float rg = a[k], zg = a[hidden + k], n = a[2 * hidden + k], gn = a[3 * hidden + k];
          const float dnk = dhr[k] * (1.0f - zg) * (1.0f - n * n);
          const float drk = dnk * gn * rg * (1.0f - rg);
          const float dzk = dhr[k] * (h_prev[k] - n) * zg * (1.0f - zg);
          const float dgnk = dnk * rg;
          dgr[k] = drk;
          dgr[hidden + k] = dzk;
          dgr[2 * hidden + k] = dgnk;
          drz[k] = drk;
          drz[hidden + k] = dzk;
          dnr[k] = dnk;
          dgnr[k] = dgnk;
          dir[k] = dhr[k] * zg;
          sum[k] += drk;
          sum[hidden + k] += dzk;
          sum[2 * hidden + k] += dnk;
          sum_hn[k] += dgnk;
        }
      }
      // dh <- direct + [dr, dz, dg_n] W_hh
      matrix_product(rows, dg.data(), width, w, direct.data(), hidden, nullptr, dh.data(), hidden);
      resets.pass_back(first, rows, t, dh.data(), reset_sum.data());
    }
    std::memcpy(dh_out + first * hidden, dh.data(), rows * hidden * sizeof(float));
    std::memcpy(db_out + first * width, bias_sum.data(), rows * width * sizeof(float));
    std::memcpy(db_hn_out + first * hidden, bias_hn_sum.data(), rows * hidden * sizeof(float));
    std::memcpy(d_reset_out + first * hidden, reset_sum.data(), rows * hidden * sizeof(float));
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(recurrax_gru_forward, GruForwardImpl,
                              results<2>(arguments<9>(ffi::Ffi::Bind()).Attr<int32_t>("projected")));

XLA_FFI_DEFINE_HANDLER_SYMBOL(recurrax_gru_inference, GruInferenceImpl,
                              results<1>(arguments<9>(ffi::Ffi::Bind()).Attr<int32_t>("projected")));

XLA_FFI_DEFINE_HANDLER_SYMBOL(recurrax_gru_backward, GruBackwardImpl,
                              results<7>(arguments<9>(ffi::Ffi::Bind())));
