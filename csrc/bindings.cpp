// Python bindings for the megastack kernels (module megastack._kernels). This file owns every
// torch-side concern: input checks, output allocation, the device guard and the current stream;
// the .cu launchers only see raw pointers (kernels.h).

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include <string>
#include <utility>
#include <tuple>

#include "kernels.h"

namespace megastack {
namespace {

#define MS_CHECK_CUDA_TENSOR(t)                                                      \
  TORCH_CHECK((t).is_cuda(), #t " must be a CUDA tensor");                           \
  TORCH_CHECK((t).is_contiguous(), #t " must be contiguous")

void check_float_or_bf16(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16, name,
              " must be float32 or bfloat16, got ", t.scalar_type());
}

void check_same(const at::Tensor& t, const at::Tensor& ref, const char* name) {
  MS_CHECK_CUDA_TENSOR(t);
  TORCH_CHECK(t.device() == ref.device(), name, " must be on ", ref.device());
  TORCH_CHECK(t.sizes() == ref.sizes(), name, " must have shape ", ref.sizes(), ", got ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), name, " must have dtype ",
              ref.scalar_type(), ", got ", t.scalar_type());
}

void check_rows_f32(const at::Tensor& t, int64_t rows, const at::Tensor& ref, const char* name) {
  MS_CHECK_CUDA_TENSOR(t);
  TORCH_CHECK(t.device() == ref.device(), name, " must be on ", ref.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.numel() == rows, name,
              " must be float32 with one value per row (", rows, ")");
}

DType dtype_of(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat ? DType::kFloat32 : DType::kBFloat16;
}

cudaStream_t stream_for(const at::Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, " failed: ", cudaGetErrorString(err));
}

const void* opt_ptr(const c10::optional<at::Tensor>& t) {
  return (t.has_value() && t->defined()) ? t->data_ptr() : nullptr;
}

// ---- RMSNorm -------------------------------------------------------------------------------

void check_rmsnorm_inputs(const at::Tensor& x, const at::Tensor& weight) {
  MS_CHECK_CUDA_TENSOR(x);
  check_float_or_bf16(x, "x");
  TORCH_CHECK(x.dim() == 2, "x must be 2-D [rows, hidden], got ", x.dim(), "-D");
  MS_CHECK_CUDA_TENSOR(weight);
  TORCH_CHECK(weight.device() == x.device(), "weight must be on ", x.device());
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(1), "weight must have shape [",
              x.size(1), "], got ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type() || weight.scalar_type() == at::kFloat,
              "weight must be float32 or ", x.scalar_type(), ", got ", weight.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, c10::optional<at::Tensor>> rmsnorm_fwd_py(
    const at::Tensor& x, const c10::optional<at::Tensor>& residual, const at::Tensor& weight,
    double eps) {
  check_rmsnorm_inputs(x, weight);
  const bool has_residual = residual.has_value() && residual->defined();
  if (has_residual) check_same(*residual, x, "residual");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t rows = x.size(0), hidden = x.size(1);
  auto y = at::empty_like(x);
  auto rstd = at::empty({rows}, x.options().dtype(at::kFloat));
  c10::optional<at::Tensor> sum;
  if (has_residual) sum = at::empty_like(x);
  check_launch(rmsnorm_fwd(dtype_of(x), dtype_of(weight), x.data_ptr(), opt_ptr(residual),
                           weight.data_ptr(), y.data_ptr(), has_residual ? sum->data_ptr() : nullptr,
                           rstd.data_ptr<float>(), rows, hidden, static_cast<float>(eps),
                           stream_for(x)),
               "rmsnorm_fwd");
  return {y, rstd, sum};
}

std::tuple<at::Tensor, at::Tensor> rmsnorm_bwd_py(const at::Tensor& dy, const at::Tensor& xin,
                                                  const at::Tensor& rstd,
                                                  const at::Tensor& weight,
                                                  const c10::optional<at::Tensor>& dsum) {
  check_rmsnorm_inputs(xin, weight);
  check_same(dy, xin, "dy");
  const bool has_dsum = dsum.has_value() && dsum->defined();
  if (has_dsum) check_same(*dsum, xin, "dsum");
  check_rows_f32(rstd, xin.size(0), xin, "rstd");
  const c10::cuda::CUDAGuard guard(xin.device());
  const int64_t rows = xin.size(0), hidden = xin.size(1);
  auto dx = at::empty_like(xin);
  auto dw = at::empty_like(weight);
  if (rows == 0) return {dx, dw.zero_()};
  const int64_t blocks = rmsnorm_bwd_partial_rows(dtype_of(xin), dtype_of(weight), dy.data_ptr(),
                                                  xin.data_ptr(), weight.data_ptr(),
                                                  opt_ptr(dsum), dx.data_ptr(), rows, hidden);
  auto partial = at::empty({blocks, hidden}, xin.options().dtype(at::kFloat));
  check_launch(rmsnorm_bwd(dtype_of(xin), dtype_of(weight), dy.data_ptr(), xin.data_ptr(),
                           rstd.data_ptr<float>(), weight.data_ptr(), opt_ptr(dsum),
                           dx.data_ptr(), dw.data_ptr(), partial.data_ptr<float>(), blocks, rows,
                           hidden, stream_for(xin)),
               "rmsnorm_bwd");
  return {dx, dw};
}

// Python names of the RMSNorm backward paths (kernels.h).
constexpr std::pair<const char*, RmsNormBwdPath> kRmsNormBwdPaths[] = {
    {"register", RmsNormBwdPath::kRegister},
    {"staged-2", RmsNormBwdPath::kStaged2},
    {"staged-3", RmsNormBwdPath::kStaged3},
    {"staged-4", RmsNormBwdPath::kStaged4},
};

void set_rmsnorm_bwd_path_py(const std::string& name) {
  for (const auto& [known, path] : kRmsNormBwdPaths) {
    if (name == known) return set_rmsnorm_bwd_path(path);
  }
  TORCH_CHECK(false, "the RMSNorm backward path is 'register', 'staged-2', 'staged-3' or "
              "'staged-4', got '", name, "'");
}

std::string rmsnorm_bwd_path_py() {
  const RmsNormBwdPath current = rmsnorm_bwd_path();
  for (const auto& [known, path] : kRmsNormBwdPaths) {
    if (path == current) return known;
  }
  TORCH_CHECK(false, "unnamed RMSNorm backward path ", static_cast<int>(current));
}

// ---- SwiGLU --------------------------------------------------------------------------------

void check_swiglu_input(const at::Tensor& x) {
  MS_CHECK_CUDA_TENSOR(x);
  check_float_or_bf16(x, "x");
  TORCH_CHECK(x.dim() == 2 && x.size(1) % 2 == 0,
              "x must be 2-D [rows, 2 * ffn] ([gate; up] per row), got ", x.sizes());
}

at::Tensor swiglu_fwd_py(const at::Tensor& x) {
  check_swiglu_input(x);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t rows = x.size(0), ffn = x.size(1) / 2;
  auto y = at::empty({rows, ffn}, x.options());
  check_launch(swiglu_fwd(dtype_of(x), x.data_ptr(), y.data_ptr(), rows, ffn, stream_for(x)),
               "swiglu_fwd");
  return y;
}

at::Tensor swiglu_bwd_py(const at::Tensor& dy, const at::Tensor& x) {
  check_swiglu_input(x);
  const int64_t rows = x.size(0), ffn = x.size(1) / 2;
  MS_CHECK_CUDA_TENSOR(dy);
  TORCH_CHECK(dy.device() == x.device() && dy.scalar_type() == x.scalar_type(),
              "dy must match x's device and dtype");
  TORCH_CHECK(dy.dim() == 2 && dy.size(0) == rows && dy.size(1) == ffn, "dy must have shape [",
              rows, ", ", ffn, "], got ", dy.sizes());
  const c10::cuda::CUDAGuard guard(x.device());
  auto dx = at::empty_like(x);
  check_launch(swiglu_bwd(dtype_of(x), dy.data_ptr(), x.data_ptr(), dx.data_ptr(), rows, ffn,
                          stream_for(x)),
               "swiglu_bwd");
  return dx;
}

// ---- RoPE ----------------------------------------------------------------------------------

at::Tensor rope_py(const at::Tensor& t, const at::Tensor& cos, const at::Tensor& sin,
                   bool backward) {
  TORCH_CHECK(t.is_cuda(), "t must be a CUDA tensor");
  check_float_or_bf16(t, "t");
  TORCH_CHECK(t.dim() == 4, "t must be [s, b, h, d], got ", t.dim(), "-D");
  TORCH_CHECK(t.stride(3) == 1, "t must have unit stride in its last dimension");
  const int64_t s = t.size(0), b = t.size(1), h = t.size(2), d = t.size(3);
  MS_CHECK_CUDA_TENSOR(cos);
  MS_CHECK_CUDA_TENSOR(sin);
  TORCH_CHECK(cos.device() == t.device() && sin.device() == t.device(),
              "cos and sin must be on ", t.device());
  TORCH_CHECK(cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat,
              "cos and sin must be float32");
  TORCH_CHECK(cos.dim() == 2 && cos.size(0) == s && cos.sizes() == sin.sizes(),
              "cos and sin must be [s, rot_dim] with s = ", s, ", got ", cos.sizes(), " and ",
              sin.sizes());
  const int64_t rot_dim = cos.size(1);
  TORCH_CHECK(rot_dim % 2 == 0 && rot_dim <= d, "rot_dim must be even and <= head dim ", d,
              ", got ", rot_dim);
  const c10::cuda::CUDAGuard guard(t.device());
  auto out = at::empty({s, b, h, d}, t.options());
  check_launch(rope(dtype_of(t), backward, t.data_ptr(), out.data_ptr(), cos.data_ptr<float>(),
                    sin.data_ptr<float>(), s, b, h, d, rot_dim, t.stride(0), t.stride(1),
                    t.stride(2), stream_for(t)),
               backward ? "rope_bwd" : "rope_fwd");
  return out;
}

at::Tensor rope_fwd_py(const at::Tensor& t, const at::Tensor& cos, const at::Tensor& sin) {
  return rope_py(t, cos, sin, false);
}

at::Tensor rope_bwd_py(const at::Tensor& dy, const at::Tensor& cos, const at::Tensor& sin) {
  return rope_py(dy, cos, sin, true);
}

// ---- cross entropy -------------------------------------------------------------------------

void check_ce_inputs(const at::Tensor& logits, const at::Tensor& target) {
  MS_CHECK_CUDA_TENSOR(logits);
  check_float_or_bf16(logits, "logits");
  TORCH_CHECK(logits.dim() == 2, "logits must be 2-D [rows, vocab], got ", logits.dim(), "-D");
  MS_CHECK_CUDA_TENSOR(target);
  TORCH_CHECK(target.device() == logits.device(), "target must be on ", logits.device());
  TORCH_CHECK(target.scalar_type() == at::kLong && target.numel() == logits.size(0),
              "target must be int64 with one id per row (", logits.size(0), ")");
}

at::Tensor ce_row_max_py(const at::Tensor& logits) {
  MS_CHECK_CUDA_TENSOR(logits);
  check_float_or_bf16(logits, "logits");
  TORCH_CHECK(logits.dim() == 2, "logits must be 2-D [rows, vocab], got ", logits.dim(), "-D");
  const c10::cuda::CUDAGuard guard(logits.device());
  auto row_max = at::empty({logits.size(0)}, logits.options().dtype(at::kFloat));
  check_launch(ce_row_max(dtype_of(logits), logits.data_ptr(), row_max.data_ptr<float>(),
                          logits.size(0), logits.size(1), stream_for(logits)),
               "ce_row_max");
  return row_max;
}

// Returns [2, rows] float32: sum of exp(x - max) and target logit - max, stacked so the
// caller needs one all-reduce.
at::Tensor ce_sumexp_target_py(const at::Tensor& logits, const at::Tensor& target,
                               const at::Tensor& row_max, int64_t vocab_start) {
  check_ce_inputs(logits, target);
  const int64_t rows = logits.size(0);
  check_rows_f32(row_max, rows, logits, "row_max");
  const c10::cuda::CUDAGuard guard(logits.device());
  auto stats = at::empty({2, rows}, logits.options().dtype(at::kFloat));
  float* base = stats.data_ptr<float>();
  check_launch(ce_sumexp_target(dtype_of(logits), logits.data_ptr(), target.data_ptr<int64_t>(),
                                row_max.data_ptr<float>(), base, base + rows, rows,
                                logits.size(1), vocab_start, stream_for(logits)),
               "ce_sumexp_target");
  return stats;
}

// Returns [3, rows] float32: row max, sum of exp(x - max), target logit - max.
at::Tensor ce_fwd_local_py(const at::Tensor& logits, const at::Tensor& target) {
  check_ce_inputs(logits, target);
  const int64_t rows = logits.size(0);
  const c10::cuda::CUDAGuard guard(logits.device());
  auto stats = at::empty({3, rows}, logits.options().dtype(at::kFloat));
  float* base = stats.data_ptr<float>();
  check_launch(ce_fwd_local(dtype_of(logits), logits.data_ptr(), target.data_ptr<int64_t>(),
                            base, base + rows, base + 2 * rows, rows, logits.size(1),
                            stream_for(logits)),
               "ce_fwd_local");
  return stats;
}

at::Tensor ce_bwd_py(const at::Tensor& logits, const at::Tensor& target,
                     const at::Tensor& row_max, const at::Tensor& sum_exp,
                     const at::Tensor& grad, int64_t vocab_start) {
  check_ce_inputs(logits, target);
  const int64_t rows = logits.size(0);
  check_rows_f32(row_max, rows, logits, "row_max");
  check_rows_f32(sum_exp, rows, logits, "sum_exp");
  check_rows_f32(grad, rows, logits, "grad");
  const c10::cuda::CUDAGuard guard(logits.device());
  auto dlogits = at::empty_like(logits);
  check_launch(ce_bwd(dtype_of(logits), logits.data_ptr(), target.data_ptr<int64_t>(),
                      row_max.data_ptr<float>(), sum_exp.data_ptr<float>(),
                      grad.data_ptr<float>(), dlogits.data_ptr(), rows, logits.size(1),
                      vocab_start, stream_for(logits)),
               "ce_bwd");
  return dlogits;
}

}  // namespace
}  // namespace megastack

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace megastack;
  m.doc() = "megastack fused CUDA kernels (RMSNorm, SwiGLU, RoPE, vocab-parallel CE)";
  m.def("rmsnorm_fwd", &rmsnorm_fwd_py, "RMSNorm forward -> (y, rstd, sum or None)",
        py::arg("x"), py::arg("residual"), py::arg("weight"), py::arg("eps"));
  m.def("rmsnorm_bwd", &rmsnorm_bwd_py, "RMSNorm backward -> (dx, dweight)", py::arg("dy"),
        py::arg("xin"), py::arg("rstd"), py::arg("weight"), py::arg("dsum"));
  m.def("set_rmsnorm_bwd_path", &set_rmsnorm_bwd_path_py,
        "the RMSNorm backward kernel, process-wide: 'register' (default) or 'staged-2/3/4' "
        "(cp.async through 2-4 shared-memory slots)",
        py::arg("name"));
  m.def("rmsnorm_bwd_path", &rmsnorm_bwd_path_py, "the RMSNorm backward kernel in use");
  m.def("swiglu_fwd", &swiglu_fwd_py, "silu(gate) * up on [rows, 2*ffn]", py::arg("x"));
  m.def("swiglu_bwd", &swiglu_bwd_py, "SwiGLU backward -> d[gate; up]", py::arg("dy"),
        py::arg("x"));
  m.def("rope_fwd", &rope_fwd_py, "rotate-half RoPE on [s, b, h, d]", py::arg("t"),
        py::arg("cos"), py::arg("sin"));
  m.def("rope_bwd", &rope_bwd_py, "RoPE backward", py::arg("dy"), py::arg("cos"),
        py::arg("sin"));
  m.def("ce_row_max", &ce_row_max_py, "per-row max of the local logits", py::arg("logits"));
  m.def("ce_sumexp_target", &ce_sumexp_target_py,
        "[2, rows]: sum exp(x - max), target logit - max", py::arg("logits"), py::arg("target"),
        py::arg("row_max"), py::arg("vocab_start"));
  m.def("ce_fwd_local", &ce_fwd_local_py, "[3, rows]: max, sum exp, target logit - max",
        py::arg("logits"), py::arg("target"));
  m.def("ce_bwd", &ce_bwd_py, "grad * (softmax - onehot)", py::arg("logits"), py::arg("target"),
        py::arg("row_max"), py::arg("sum_exp"), py::arg("grad"), py::arg("vocab_start"));
}
