// CPU kernels (and the op schemas) of the id/value feature ops:
//   fused_uint64_mod, fused_bucketize, fused_multi_hash, feature_cross.
// Semantics: recis-api.md §1.3.5-§1.3.7, §1.3.10; Python face: recis_compat/ops/features.py.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <numeric>
#include <utility>
#include <vector>

#include "common.h"
#include "features/feature_checks.h"
#include "features/feature_kernels.h"
#include "hash/hash_functions.h"

namespace recis_compat {
namespace {

using features::nth;

// Runs fn(job, begin, end) over the concatenated index space of several jobs, in parallel.
template <typename F>
void fused_parallel_for(const std::vector<int64_t>& starts, int64_t grain, const F& fn) {
  const int64_t total = starts.back();
  if (total == 0) return;
  at::parallel_for(0, total, grain, [&](int64_t begin, int64_t end) {
    size_t k = std::upper_bound(starts.begin(), starts.end(), begin) - starts.begin() - 1;
    int64_t pos = begin;
    while (pos < end) {
      while (k + 1 < starts.size() && pos >= starts[k + 1]) ++k;
      const int64_t e = std::min(end, starts[k + 1]);
      fn(k, pos - starts[k], e - starts[k]);
      pos = e;
    }
  });
}

// ------------------------------------------------------------------ fused_uint64_mod
std::vector<at::Tensor> fused_uint64_mod_cpu(at::TensorList values, at::IntArrayRef mods) {
  const char* op = "recis_compat::fused_uint64_mod";
  features::check_same_count(op, values.size(), "values", mods.size(), "mods");
  std::vector<at::Tensor> ins, outs;
  std::vector<int64_t> starts{0};
  for (size_t k = 0; k < values.size(); ++k) {
    features::check_mod_job(op, values, mods, k);
    ins.push_back(values[k].contiguous());
    outs.push_back(at::empty_like(ins.back(), at::MemoryFormat::Contiguous));
    starts.push_back(starts.back() + ins.back().numel());
  }
  fused_parallel_for(starts, 32768, [&](size_t k, int64_t b, int64_t e) {
    const int64_t* x = ins[k].data_ptr<int64_t>();
    int64_t* y = outs[k].data_ptr<int64_t>();
    const int64_t m = mods[k];
    for (int64_t i = b; i < e; ++i) y[i] = features::uint64_mod(x[i], m);
  });
  return outs;
}

// ------------------------------------------------------------------ fused_bucketize
template <typename T>
void bucketize_range(const at::Tensor& in, at::Tensor& out, const double* bnd, int64_t nb,
                     int64_t b, int64_t e) {
  const T* x = in.data_ptr<T>();
  int64_t* y = out.data_ptr<int64_t>();
  for (int64_t i = b; i < e; ++i) y[i] = features::bucket_of(static_cast<double>(x[i]), bnd, nb);
}

std::vector<at::Tensor> fused_bucketize_cpu(at::TensorList values, at::TensorList boundaries) {
  const char* op = "recis_compat::fused_bucketize";
  features::check_same_count(op, values.size(), "values", boundaries.size(), "boundaries");
  std::vector<at::Tensor> ins, bnds, outs;
  std::vector<int64_t> starts{0};
  for (size_t k = 0; k < values.size(); ++k) {
    TORCH_CHECK(at::isFloatingType(values[k].scalar_type()), op, ": '", nth("values", k),
                "' must be floating point, got ", values[k].scalar_type());
    features::check_boundaries(op, boundaries, k);
    TORCH_CHECK(boundaries[k].device() == values[k].device(), op, ": '", nth("boundaries", k),
                "' must be on the device of its values");
    ins.push_back(values[k].contiguous());
    bnds.push_back(boundaries[k].to(at::kDouble).contiguous());
    outs.push_back(at::empty(ins.back().sizes(), ins.back().options().dtype(at::kLong)));
    starts.push_back(starts.back() + ins.back().numel());
  }
  fused_parallel_for(starts, 16384, [&](size_t k, int64_t b, int64_t e) {
    const double* bnd = bnds[k].data_ptr<double>();
    const int64_t nb = bnds[k].numel();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ins[k].scalar_type(), "bucketize", [&] {
      bucketize_range<scalar_t>(ins[k], outs[k], bnd, nb, b, e);
    });
  });
  return outs;
}

// ------------------------------------------------------------------ fused_multi_hash
std::vector<at::Tensor> fused_multi_hash_cpu(at::TensorList inputs, at::IntArrayRef muls,
                                             at::IntArrayRef primes, at::IntArrayRef buckets,
                                             at::IntArrayRef num_hashes) {
  const char* op = "recis_compat::fused_multi_hash";
  features::check_multi_hash_params(op, inputs, muls, primes, buckets, num_hashes);
  std::vector<at::Tensor> ins, outs;
  std::vector<int64_t> first_hash, starts{0};
  int64_t h = 0;
  for (size_t k = 0; k < inputs.size(); ++k) {
    features::check_multi_hash_input(op, inputs, num_hashes, k);
    ins.push_back(inputs[k].contiguous());
    first_hash.push_back(h);
    for (int64_t j = 0; j < num_hashes[k]; ++j)
      outs.push_back(at::empty_like(ins.back(), at::MemoryFormat::Contiguous));
    h += num_hashes[k];
    starts.push_back(starts.back() + ins.back().numel());
  }
  fused_parallel_for(starts, 16384, [&](size_t k, int64_t b, int64_t e) {
    const int64_t* x = ins[k].data_ptr<int64_t>();
    for (int64_t j = first_hash[k]; j < first_hash[k] + num_hashes[k]; ++j) {
      int64_t* y = outs[j].data_ptr<int64_t>();
      for (int64_t i = b; i < e; ++i) y[i] = features::multi_hash_one(x[i], muls[j], primes[j], buckets[j]);
    }
  });
  return outs;
}

// ------------------------------------------------------------------ feature_cross
template <typename off_t, typename w_t>
void dedupe_rows(const int64_t* val, const off_t* off, const w_t* w, int64_t rows, int64_t* uid,
                 w_t* uw, int64_t* cnt) {
  const int64_t base = rows > 0 ? static_cast<int64_t>(off[0]) : 0;
  at::parallel_for(0, rows, 256, [&](int64_t rb, int64_t re) {
    std::vector<std::pair<int64_t, int64_t>> tmp;  // (id, position): sorting keeps the first
    for (int64_t r = rb; r < re; ++r) {
      const int64_t s = off[r], e = off[r + 1];
      tmp.clear();
      for (int64_t j = s; j < e; ++j) tmp.emplace_back(val[j], j);
      std::sort(tmp.begin(), tmp.end());
      int64_t c = 0;
      for (size_t i = 0; i < tmp.size(); ++i) {
        if (i > 0 && tmp[i].first == tmp[i - 1].first) continue;
        uid[s - base + c] = tmp[i].first;
        uw[s - base + c] = w ? w[tmp[i].second] : w_t(1);
        ++c;
      }
      cnt[r] = c;
    }
  });
}

template <typename off_t, typename w_t>
void cross_impl(const at::Tensor& xv, const at::Tensor& xo, const at::Tensor& xw, const at::Tensor& yv,
                const at::Tensor& yo, const at::Tensor& yw, int64_t rows, at::Tensor& out_v,
                at::Tensor& out_o, at::Tensor& out_w) {
  const off_t* xoff = xo.data_ptr<off_t>();
  const off_t* yoff = yo.data_ptr<off_t>();
  auto lopt = xv.options();
  std::vector<int64_t> xid(std::max<int64_t>(xv.numel(), 1)), yid(std::max<int64_t>(yv.numel(), 1));
  std::vector<w_t> xws(xid.size()), yws(yid.size());
  std::vector<int64_t> xc(rows), yc(rows);
  dedupe_rows<off_t, w_t>(xv.data_ptr<int64_t>(), xoff, xw.defined() ? xw.data_ptr<w_t>() : nullptr,
                          rows, xid.data(), xws.data(), xc.data());
  dedupe_rows<off_t, w_t>(yv.data_ptr<int64_t>(), yoff, yw.defined() ? yw.data_ptr<w_t>() : nullptr,
                          rows, yid.data(), yws.data(), yc.data());
  out_o = at::empty({rows + 1}, xo.options());
  off_t* oo = out_o.data_ptr<off_t>();
  std::vector<int64_t> ostart(rows + 1, 0);
  for (int64_t r = 0; r < rows; ++r) ostart[r + 1] = ostart[r] + xc[r] * yc[r];
  for (int64_t r = 0; r <= rows; ++r) oo[r] = static_cast<off_t>(ostart[r]);
  TORCH_CHECK(ostart[rows] <= std::numeric_limits<off_t>::max(),
              "recis_compat::feature_cross: ", ostart[rows], " crossed ids overflow the offsets dtype");
  out_v = at::empty({ostart[rows]}, lopt);
  out_w = at::empty({ostart[rows]}, lopt.dtype(c10::CppTypeToScalarType<w_t>::value));
  int64_t* ov = out_v.data_ptr<int64_t>();
  w_t* ow = out_w.data_ptr<w_t>();
  const int64_t xbase = rows > 0 ? static_cast<int64_t>(xoff[0]) : 0;
  const int64_t ybase = rows > 0 ? static_cast<int64_t>(yoff[0]) : 0;
  at::parallel_for(0, rows, 64, [&](int64_t rb, int64_t re) {
    for (int64_t r = rb; r < re; ++r) {
      const int64_t xs = xoff[r] - xbase, ys = yoff[r] - ybase;
      int64_t o = ostart[r];
      for (int64_t i = 0; i < xc[r]; ++i)
        for (int64_t j = 0; j < yc[r]; ++j, ++o) {
          ov[o] = static_cast<int64_t>(hashing::murmur64a_pair(xid[xs + i], yid[ys + j]));
          ow[o] = xws[xs + i] * yws[ys + j];
        }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> feature_cross_cpu(
    const at::Tensor& x_val, const at::Tensor& x_off, const c10::optional<at::Tensor>& x_w,
    const at::Tensor& y_val, const at::Tensor& y_off, const c10::optional<at::Tensor>& y_w) {
  features::check_cross_args(x_val, x_off, x_w, y_val, y_off, y_w);
  const features::CrossInputs in = features::prepare_cross_inputs(x_val, x_off, x_w, y_val, y_off, y_w);
  at::Tensor ov, oo, ow;
  AT_DISPATCH_FLOATING_TYPES(in.wdt, "feature_cross", [&] {
    if (in.xo.scalar_type() == at::kLong)
      cross_impl<int64_t, scalar_t>(in.xv, in.xo, in.xw, in.yv, in.yo, in.yw, in.rows, ov, oo, ow);
    else
      cross_impl<int32_t, scalar_t>(in.xv, in.xo, in.xw, in.yv, in.yo, in.yw, in.rows, ov, oo, ow);
  });
  return {ov, oo, ow};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(recis_compat, m) {
  m.def("fused_uint64_mod(Tensor[] values, int[] mods) -> Tensor[]");
  m.def("fused_bucketize(Tensor[] values, Tensor[] boundaries) -> Tensor[]");
  m.def("fused_multi_hash(Tensor[] inputs, int[] muls, int[] primes, int[] buckets, int[] num_hashes) -> Tensor[]");
  m.def("feature_cross(Tensor x_val, Tensor x_off, Tensor? x_w, Tensor y_val, Tensor y_off, Tensor? y_w) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(recis_compat, CPU, m) {
  m.impl("fused_uint64_mod", &fused_uint64_mod_cpu);
  m.impl("fused_bucketize", &fused_bucketize_cpu);
  m.impl("fused_multi_hash", &fused_multi_hash_cpu);
  m.impl("feature_cross", &feature_cross_cpu);
}

}  // namespace recis_compat
