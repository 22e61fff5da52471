// The loops over time of the two cells with a forget gate read before the memory, ForgetElman and
// the minimal gated unit (MGU), as XLA custom calls on a CPU (see loops.h). Built and registered
// by recurrax/native/__init__.py.
//
// Forward, per sequence and step t (two products, one after the other):
//   f_t = sigmoid(W_fx x_t + W_fh h_{t-1} + b_f)    ([x_t, h_{t-1}] [W_fx^T; W_fh^T])
//   u_t = f_t * h_{t-1}
//   z_t = W_hx x_t + W_hh u_t + b                   ([x_t, u_t] [W_hx^T; W_hh^T])
//   ForgetElman: h_t = sigma(z_t) (sigma its activation, numbered as in loops.h)
//   MGU:         n_t = tanh(z_t),  h_t = h_{t-1} + f_t * (n_t - h_{t-1})
// Backward, from the last step to the first, with dh the gradient carried to step t (dh += dy_t):
//   ForgetElman: dz_t = dh * sigma'(z_t) (from h_t)
//   MGU:         dz_t = dh * f_t * (1 - n_t^2)
//   du = dz_t W_hh
//   ForgetElman: df_t = du * h_{t-1};                 dh <- du * f_t + dzf_t W_fh
//   MGU:         df_t = dh * (n_t - h_{t-1}) + du * h_{t-1}
//                                                      dh <- dh * (1 - f_t) + du * f_t + dzf_t W_fh
//   with dzf_t = df_t * f_t (1 - f_t).
// dzf_t and dz_t are written out (the weight gradients come from products over all steps, in XLA),
// and their sums over each sequence's steps (the biases' gradients). A masked step keeps h and
// outputs it as it is; backward it passes dh on, with dzf_t = dz_t = 0. A step that starts an
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
// h_reset (B, H) (Resets), wf_t and wh_t (I + H, H) = [W_fx^T; W_fh^T] and [W_hx^T; W_hh^T], bias
// (2H) = [b_f; b], h0 (B, H). With
// `projected`, xs (B, T, 2H) holds the input products [W_fx x_t, W_hx x_t] already and wf_t, wh_t
// (H, H) are W_fh^T and W_hh^T. Writes the states hs (B, T, H) and, where gates_out is not null
// (training), the forget gates (B, T, H) and for the MGU (mgu true) the candidates n (B, T, H).
ffi::Error forward_loop(bool mgu, ffi::Buffer<ffi::F32> xs, ffi::Buffer<ffi::F32> mask, ffi::Buffer<ffi::F32> starts,
                        ffi::Buffer<ffi::F32> h_reset, ffi::Buffer<ffi::F32> wf_t, ffi::Buffer<ffi::F32> wh_t,
                        ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> h0, int32_t activation, int32_t projected,
                        float* hs_out, float* gates_out, float* candidates_out) {
  const auto dims = xs.dimensions();
  const auto w_dims = wf_t.dimensions();
  if (dims.size() != 3 || w_dims.size() != 2) {
    return ffi::Error::InvalidArgument("forget_gate_forward: xs must be (B, T, I) and wf_t (I + H, H)");
  }
  const int64_t batch = dims[0], length = dims[1], inputs = dims[2], hidden = w_dims[1];
  const int64_t x_width = projected ? 0 : inputs, joint = x_width + hidden;  // a row of the products
  if (w_dims[0] != joint || hidden % 16 != 0 || wh_t.dimensions().size() != 2 || wh_t.dimensions()[0] != joint ||
      wh_t.dimensions()[1] != hidden || (projected && inputs != 2 * hidden)) {
    return ffi::Error::InvalidArgument(projected
        ? "forget_gate_forward: projected, xs must be (B, T, 2H) and wf_t, wh_t (H, H)"
        : "forget_gate_forward: wf_t and wh_t must be (I + H, H) with H a multiple of 16");
  }
  if (bias.element_count() != static_cast<size_t>(2 * hidden) ||
      h0.element_count() != static_cast<size_t>(batch * hidden)) {
    return ffi::Error::InvalidArgument("forget_gate_forward: bias must be (2H) and h0 (B, H)");
  }
  if (mask.element_count() != static_cast<size_t>(batch * length)) {
    return ffi::Error::InvalidArgument("forget_gate_forward: mask must be (B, T)");
  }
  if (!known_activation(activation)) return ffi::Error::InvalidArgument("forget_gate_forward: unknown activation");
  const Resets resets(starts, mask, h_reset, batch, length, hidden);
  if (!resets.fits) {
    return ffi::Error::InvalidArgument("forget_gate_forward: starts must be (B, T) and h_reset (B, H)");
  }
  const float* valid = mask.typed_data();
  const float* b = bias.typed_data();
  const float* x_in = xs.typed_data();
  const float* h_first = h0.typed_data();
  const Panels wf(wf_t.typed_data(), joint, hidden);
  const Panels wh(wh_t.typed_data(), joint, hidden);
  over_rows(batch, [=, &wf, &wh, &resets](int64_t first, int64_t rows) {
    if (rows == 0) return;
    std::vector<float> xh(rows * joint);  // row r: x_t (unless projected), then h_{t-1}
    std::vector<float> xu(rows * joint);  // row r: x_t (unless projected), then u_t = f_t * h_{t-1}
    std::vector<float> f(rows * hidden), z(rows * hidden);
    for (int64_t r = 0; r < rows; ++r) {
      std::memcpy(xh.data() + r * joint + x_width, h_first + (first + r) * hidden, hidden * sizeof(float));
    }
    for (int64_t t = 0; t < length; ++t) {
      // projected: the first row's input products at this step; row r's start r x T x 2H numbers on
      const float* products = projected ? x_in + (first * length + t) * inputs : nullptr;
      for (int64_t r = 0; r < rows; ++r) {
        const float* x = x_in + ((first + r) * length + t) * inputs;
        if (!projected) {
          std::memcpy(xh.data() + r * joint, x, inputs * sizeof(float));
          std::memcpy(xu.data() + r * joint, x, inputs * sizeof(float));
        }
        if (t + 1 < length) {  // the next step's rows
          const int64_t next = ((first + r) * length + t + 1) * hidden;
          prefetch(x + inputs, inputs);
          prefetch_for_writing(hs_out + next, hidden);
          if (gates_out) prefetch_for_writing(gates_out + next, hidden);
          if (candidates_out) prefetch_for_writing(candidates_out + next, hidden);
        }
        const int64_t seq = first + r;
        if (resets.at(seq, t)) resets.restore(seq, xh.data() + r * joint + x_width);
      }
      matrix_product(rows, xh.data(), joint, wf, products, length * inputs, b, f.data(), hidden);
      for (int64_t r = 0; r < rows; ++r) {
        float* fr = f.data() + r * hidden;
        const float* hr = xh.data() + r * joint + x_width;
        float* ur = xu.data() + r * joint + x_width;
        for (int64_t k = 0; k < hidden; ++k) {
          fr[k] = sigmoid_approx(fr[k]);
          ur[k] = fr[k] * hr[k];
        }
      }
      matrix_product(rows, xu.data(), joint, wh, projected ? products + hidden : nullptr, length * inputs,
                     b + hidden, z.data(), hidden);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t at = ((first + r) * length + t) * hidden;
        float* hr = xh.data() + r * joint + x_width;
        float* zr = z.data() + r * hidden;
        const float* fr = f.data() + r * hidden;
        if (mgu) {
          for (int64_t k = 0; k < hidden; ++k) zr[k] = tanh_approx(zr[k]);
        } else {
          activate(activation, zr, hidden);
        }
        if (gates_out) {
          std::memcpy(gates_out + at, fr, hidden * sizeof(float));
          if (mgu) std::memcpy(candidates_out + at, zr, hidden * sizeof(float));
        }
        if (valid[(first + r) * length + t] != 0.0f) {  // a masked step keeps h
          if (mgu) {
            for (int64_t k = 0; k < hidden; ++k) hr[k] += fr[k] * (zr[k] - hr[k]);
          } else {
            std::memcpy(hr, zr, hidden * sizeof(float));
          }
        }
        std::memcpy(hs_out + at, hr, hidden * sizeof(float));
      }
    }
  });
  return ffi::Error::Success();
}

// Shapes: hs, gates (B, T, H) from the forward loop, candidates (B, T, H) for the MGU (ignored for
// ForgetElman), dys (B, T, H), mask, starts (B, T) and h_reset (B, H) as there, dh_last and h0
// (B, H), w_fh and w_hh (H, H) as the cell stores them -> dzf, dz (B, T, H), dh0 (B, H), db (B,
// 2H): the sums of each sequence's dzf and dz over its steps (the biases' gradients, per
// sequence), d_reset (B, H): the reset state's gradient.
ffi::Error backward_loop(bool mgu, ffi::Buffer<ffi::F32> hs, ffi::Buffer<ffi::F32> gates, const float* candidates,
                         ffi::Buffer<ffi::F32> dys, ffi::Buffer<ffi::F32> mask, ffi::Buffer<ffi::F32> starts,
                         ffi::Buffer<ffi::F32> h_reset, ffi::Buffer<ffi::F32> dh_last, ffi::Buffer<ffi::F32> h0,
                         ffi::Buffer<ffi::F32> w_fh, ffi::Buffer<ffi::F32> w_hh, int32_t activation,
                         ffi::ResultBuffer<ffi::F32> dzf, ffi::ResultBuffer<ffi::F32> dz,
                         ffi::ResultBuffer<ffi::F32> dh0, ffi::ResultBuffer<ffi::F32> db,
                         ffi::ResultBuffer<ffi::F32> d_reset) {
  const auto dims = hs.dimensions();
  if (dims.size() != 3) return ffi::Error::InvalidArgument("forget_gate_backward: hs must be (B, T, H)");
  const int64_t batch = dims[0], length = dims[1], hidden = dims[2];
  for (const auto* w : {&w_fh, &w_hh}) {
    if (w->dimensions().size() != 2 || w->dimensions()[0] != hidden || w->dimensions()[1] != hidden ||
        hidden % 16 != 0) {
      return ffi::Error::InvalidArgument("forget_gate_backward: w_fh and w_hh must be (H, H) with H a multiple of 16");
    }
  }
  if (mask.element_count() != static_cast<size_t>(batch * length)) {
    return ffi::Error::InvalidArgument("forget_gate_backward: mask must be (B, T)");
  }
  if (!known_activation(activation)) return ffi::Error::InvalidArgument("forget_gate_backward: unknown activation");
  const Resets resets(starts, mask, h_reset, batch, length, hidden);
  if (!resets.fits) {
    return ffi::Error::InvalidArgument("forget_gate_backward: starts must be (B, T) and h_reset (B, H)");
  }
  float* d_reset_out = d_reset->typed_data();
  const float* h_all = hs.typed_data();
  const float* f_all = gates.typed_data();
  const float* dy = dys.typed_data();
  const float* valid = mask.typed_data();
  const float* dh_end = dh_last.typed_data();
  const float* h_first = h0.typed_data();
  float* dzf_out = dzf->typed_data();
  float* dz_out = dz->typed_data();
  float* dh_out = dh0->typed_data();
  float* db_out = db->typed_data();
  const Panels pf(w_fh.typed_data(), hidden, hidden);
  const Panels ph(w_hh.typed_data(), hidden, hidden);
  over_rows(batch, [=, &pf, &ph, &resets](int64_t first, int64_t rows) {
    if (rows == 0) return;
    std::vector<float> dh(dh_end + first * hidden, dh_end + (first + rows) * hidden);
    std::vector<float> du(rows * hidden);
    std::vector<float> direct(rows * hidden);  // dh's part that does not go through W_fh
    std::vector<float> bias_sum(rows * 2 * hidden, 0.0f);
    std::vector<float> reset_sum(rows * hidden, 0.0f);
    const int64_t stride = length * hidden;
    for (int64_t t = length - 1; t >= 0; --t) {
      float* dzt = dz_out + first * stride + t * hidden;
      float* dzft = dzf_out + first * stride + t * hidden;
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t at = (first + r) * stride + t * hidden;
        float* dhr = dh.data() + r * hidden;
        float* dzr = dzt + r * stride;
        if (t > 0) {  // the step before's rows
          for (const float* rows_before : {dy, h_all, f_all, candidates}) {
            if (rows_before) prefetch(rows_before + at - hidden, hidden);
          }
          if (t > 1) prefetch(h_all + at - 2 * hidden, hidden);
          prefetch_for_writing(dzr - hidden, hidden);
          prefetch_for_writing(dzft + r * stride - hidden, hidden);
        }
        for (int64_t k = 0; k < hidden; ++k) dhr[k] += dy[at + k];
        if (valid[(first + r) * length + t] == 0.0f) {
          std::fill(dzr, dzr + hidden, 0.0f);
        } else if (mgu) {
          const float* fr = f_all + at;
          const float* nr = candidates + at;
          for (int64_t k = 0; k < hidden; ++k) dzr[k] = dhr[k] * fr[k] * (1.0f - nr[k] * nr[k]);
        } else {
          through_activation(activation, h_all + at, dhr, dzr, hidden);
        }
      }
      matrix_product(rows, dzt, stride, ph, nullptr, 0, nullptr, du.data(), hidden);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t at = (first + r) * stride + t * hidden;
        const float* dhr = dh.data() + r * hidden;
        const float* dur = du.data() + r * hidden;
        float* dzfr = dzft + r * stride;
        float* directr = direct.data() + r * hidden;
        if (valid[(first + r) * length + t] == 0.0f) {
          std::fill(dzfr, dzfr + hidden, 0.0f);
          std::memcpy(directr, dhr, hidden * sizeof(float));
          continue;
        }
        const float* fr = f_all + at;
        const int64_t seq = first + r;
        const float* h_prev = resets.before(seq, t, h_all, h_first);
        if (mgu) {
          const float* nr = candidates + at;
          for (int64_t k = 0; k < hidden; ++k) {
            const float df = dhr[k] * (nr[k] - h_prev[k]) + dur[k] * h_prev[k];
            dzfr[k] = df * fr[k] * (1.0f - fr[k]);
            directr[k] = dhr[k] * (1.0f - fr[k]) + dur[k] * fr[k];
          }
        } else {
          for (int64_t k = 0; k < hidden; ++k) {
            dzfr[k] = dur[k] * h_prev[k] * fr[k] * (1.0f - fr[k]);
            directr[k] = dur[k] * fr[k];
          }
        }
        float* sum = bias_sum.data() + r * 2 * hidden;
        const float* dzr = dzt + r * stride;
        for (int64_t k = 0; k < hidden; ++k) {
          sum[k] += dzfr[k];
          sum[hidden + k] += dzr[k];
        }
      }
      // dh <- direct + dzf_t W_fh
      matrix_product(rows, dzft, stride, pf, direct.data(), hidden, nullptr, dh.data(), hidden);
      resets.pass_back(first, rows, t, dh.data(), reset_sum.data());
    }
    std::memcpy(dh_out + first * hidden, dh.data(), rows * hidden * sizeof(float));
    std::memcpy(db_out + first * 2 * hidden, bias_sum.data(), rows * 2 * hidden * sizeof(float));
    std::memcpy(d_reset_out + first * hidden, reset_sum.data(), rows * hidden * sizeof(float));
  });
  return ffi::Error::Success();
}

// Training: -> hs (B, T, H) and the forget gates (B, T, H).
ffi::Error ForgetElmanForwardImpl(ffi::Buffer<ffi::F32> xs, ffi::Buffer<ffi::F32> mask, ffi::Buffer<ffi::F32> starts,
                                  ffi::Buffer<ffi::F32> h_reset, ffi::Buffer<ffi::F32> wf_t,
                                  ffi::Buffer<ffi::F32> wh_t, ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> h0,
                                  int32_t activation, int32_t projected, ffi::ResultBuffer<ffi::F32> hs,
                                  ffi::ResultBuffer<ffi::F32> gates) {
  return forward_loop(false, xs, mask, starts, h_reset, wf_t, wh_t, bias, h0, activation, projected,
                      hs->typed_data(), gates->typed_data(), nullptr);
}

// Inference: -> hs (B, T, H) only.
ffi::Error ForgetElmanInferenceImpl(ffi::Buffer<ffi::F32> xs, ffi::Buffer<ffi::F32> mask,
                                    ffi::Buffer<ffi::F32> starts, ffi::Buffer<ffi::F32> h_reset,
                                    ffi::Buffer<ffi::F32> wf_t, ffi::Buffer<ffi::F32> wh_t,
                                    ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> h0, int32_t activation,
                                    int32_t projected, ffi::ResultBuffer<ffi::F32> hs) {
  return forward_loop(false, xs, mask, starts, h_reset, wf_t, wh_t, bias, h0, activation, projected,
                      hs->typed_data(), nullptr, nullptr);
}

ffi::Error ForgetElmanBackwardImpl(ffi::Buffer<ffi::F32> hs, ffi::Buffer<ffi::F32> gates, ffi::Buffer<ffi::F32> dys,
                                   ffi::Buffer<ffi::F32> mask, ffi::Buffer<ffi::F32> starts,
                                   ffi::Buffer<ffi::F32> h_reset, ffi::Buffer<ffi::F32> dh_last,
                                   ffi::Buffer<ffi::F32> h0, ffi::Buffer<ffi::F32> w_fh, ffi::Buffer<ffi::F32> w_hh,
                                   int32_t activation, ffi::ResultBuffer<ffi::F32> dzf,
                                   ffi::ResultBuffer<ffi::F32> dz, ffi::ResultBuffer<ffi::F32> dh0,
                                   ffi::ResultBuffer<ffi::F32> db, ffi::ResultBuffer<ffi::F32> d_reset) {
  return backward_loop(false, hs, gates, nullptr, dys, mask, starts, h_reset, dh_last, h0, w_fh, w_hh, activation,
                       dzf, dz, dh0, db, d_reset);
}

// Training: -> hs (B, T, H), the forget gates and the candidates (B, T, H).
ffi::Error MguForwardImpl(ffi::Buffer<ffi::F32> xs, ffi::Buffer<ffi::F32> mask, ffi::Buffer<ffi::F32> starts,
                          ffi::Buffer<ffi::F32> h_reset, ffi::Buffer<ffi::F32> wf_t, ffi::Buffer<ffi::F32> wh_t,
                          ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> h0, int32_t projected,
                          ffi::ResultBuffer<ffi::F32> hs, ffi::ResultBuffer<ffi::F32> gates,
                          ffi::ResultBuffer<ffi::F32> candidates) {
  return forward_loop(true, xs, mask, starts, h_reset, wf_t, wh_t, bias, h0, kTanh, projected, hs->typed_data(),
                      gates->typed_data(), candidates->typed_data());
}

// Inference: -> hs (B, T, H) only.
ffi::Error MguInferenceImpl(ffi::Buffer<ffi::F32> xs, ffi::Buffer<ffi::F32> mask, ffi::Buffer<ffi::F32> starts,
                            ffi::Buffer<ffi::F32> h_reset, ffi::Buffer<ffi::F32> wf_t, ffi::Buffer<ffi::F32> wh_t,
                            ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> h0, int32_t projected,
                            ffi::ResultBuffer<ffi::F32> hs) {
  return forward_loop(true, xs, mask, starts, h_reset, wf_t, wh_t, bias, h0, kTanh, projected, hs->typed_data(),
                      nullptr, nullptr);
}

ffi::Error MguBackwardImpl(ffi::Buffer<ffi::F32> hs, ffi::Buffer<ffi::F32> gates, ffi::Buffer<ffi::F32> candidates,
                           ffi::Buffer<ffi::F32> dys, ffi::Buffer<ffi::F32> mask, ffi::Buffer<ffi::F32> starts,
                           ffi::Buffer<ffi::F32> h_reset, ffi::Buffer<ffi::F32> dh_last, ffi::Buffer<ffi::F32> h0,
                           ffi::Buffer<ffi::F32> w_fh, ffi::Buffer<ffi::F32> w_hh, ffi::ResultBuffer<ffi::F32> dzf,
                           ffi::ResultBuffer<ffi::F32> dz, ffi::ResultBuffer<ffi::F32> dh0,
                           ffi::ResultBuffer<ffi::F32> db, ffi::ResultBuffer<ffi::F32> d_reset) {
  return backward_loop(true, hs, gates, candidates.typed_data(), dys, mask, starts, h_reset, dh_last, h0, w_fh, w_hh,
                       kTanh, dzf, dz, dh0, db, d_reset);
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    recurrax_forget_elman_forward, ForgetElmanForwardImpl,
    results<2>(arguments<8>(ffi::Ffi::Bind()).Attr<int32_t>("activation").Attr<int32_t>("projected")));

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    recurrax_forget_elman_inference, ForgetElmanInferenceImpl,
    results<1>(arguments<8>(ffi::Ffi::Bind()).Attr<int32_t>("activation").Attr<int32_t>("projected")));

XLA_FFI_DEFINE_HANDLER_SYMBOL(recurrax_forget_elman_backward, ForgetElmanBackwardImpl,
                              results<5>(arguments<10>(ffi::Ffi::Bind()).Attr<int32_t>("activation")));

XLA_FFI_DEFINE_HANDLER_SYMBOL(recurrax_mgu_forward, MguForwardImpl,
                              results<3>(arguments<8>(ffi::Ffi::Bind()).Attr<int32_t>("projected")));

XLA_FFI_DEFINE_HANDLER_SYMBOL(recurrax_mgu_inference, MguInferenceImpl,
                              results<1>(arguments<8>(ffi::Ffi::Bind()).Attr<int32_t>("projected")));

XLA_FFI_DEFINE_HANDLER_SYMBOL(recurrax_mgu_backward, MguBackwardImpl,
                              results<5>(arguments<11>(ffi::Ffi::Bind())));
