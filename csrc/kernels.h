// Launchers for the megastack kernels. They take raw device pointers so the .cu files need no
// torch headers (nvcc compiles them in seconds); bindings.cpp checks and allocates the tensors.
// Every launcher enqueues on `stream` and returns the launch status.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace megastack {

enum class DType : int { kFloat32 = 0, kBFloat16 = 1 };

// ---- RMSNorm: x, residual, y, sum are [rows, hidden] of `x_dtype`; weight is [hidden] of
// `w_dtype` (float32 or x_dtype); rstd is [rows] float32. residual/sum_out may be null.
cudaError_t rmsnorm_fwd(DType x_dtype, DType w_dtype, const void* x, const void* residual,
                        const void* weight, void* y, void* sum_out, float* rstd, int64_t rows,
                        int64_t hidden, float eps, cudaStream_t stream);

// Rows of the fp32 partial weight-gradient buffer that keep every SM busy in rmsnorm_bwd for
// these arguments (one block per row; at most `rows`).
int64_t rmsnorm_bwd_partial_rows(DType x_dtype, DType w_dtype, const void* dy, const void* xin,
                                 const void* weight, const void* dsum, const void* dx,
                                 int64_t rows, int64_t hidden);

// dx = d(norm)/dx . dy (+ dsum); dweight = sum over rows of dy * xhat, reduced through
// `partial` ([partial_rows, hidden] float32 scratch, one row per block: any count >= 1 is
// correct, rmsnorm_bwd_partial_rows(...) is the fast one). dsum may be null.
cudaError_t rmsnorm_bwd(DType x_dtype, DType w_dtype, const void* dy, const void* xin,
                        const float* rstd, const void* weight, const void* dsum, void* dx,
                        void* dweight, float* partial, int64_t partial_rows, int64_t rows,
                        int64_t hidden, cudaStream_t stream);

// Which kernel the backward runs for rows the register path holds (hidden <= 8192 in bf16):
// kRegister keeps each row's loads in registers (the default, measured on H200); kStagedN
// streams rows through a ring of N shared-memory slots with cp.async (16-byte-aligned rows
// only; others, and rows whose slots exceed the block's shared memory, keep the register path).
// Process-wide; for benchmarks and tests comparing them. A value is the staged slot count.
enum class RmsNormBwdPath : int { kRegister = 0, kStaged2 = 2, kStaged3 = 3, kStaged4 = 4 };
void set_rmsnorm_bwd_path(RmsNormBwdPath path);
RmsNormBwdPath rmsnorm_bwd_path();

// ---- SwiGLU on megatron-core's fc1 layout: x is [rows, 2*ffn] = [gate; up] per row,
// y = silu(gate) * up is [rows, ffn]; dx is [rows, 2*ffn].
cudaError_t swiglu_fwd(DType dtype, const void* x, void* y, int64_t rows, int64_t ffn,
                       cudaStream_t stream);
cudaError_t swiglu_bwd(DType dtype, const void* dy, const void* x, void* dx, int64_t rows,
                       int64_t ffn, cudaStream_t stream);

// ---- RoPE, non-interleaved (rotate-half) on [s, b, h, d]; the input may be strided in s, b
// and h (unit stride in d), the output is contiguous. cos/sin are [s, rot_dim] float32.
// Channels >= rot_dim pass through. backward=true applies the transpose rotation.
cudaError_t rope(DType dtype, bool backward, const void* t, void* out, const float* cos,
                 const float* sin, int64_t s, int64_t b, int64_t h, int64_t d, int64_t rot_dim,
                 int64_t stride_s, int64_t stride_b, int64_t stride_h, cudaStream_t stream);

// ---- Vocab-parallel cross entropy over logits [rows, vocab] (this rank's vocab slice starting
// at vocab_start); target is [rows] int64 global ids. Phases, with all-reduces between them:
//   1. row_max (MAX across ranks)  2. sum_exp(x - max) and target logit (SUM across ranks).
cudaError_t ce_row_max(DType dtype, const void* logits, float* row_max, int64_t rows,
                       int64_t vocab, cudaStream_t stream);
cudaError_t ce_sumexp_target(DType dtype, const void* logits, const int64_t* target,
                             const float* row_max, float* sum_exp, float* target_logit,
                             int64_t rows, int64_t vocab, int64_t vocab_start,
                             cudaStream_t stream);
// One-pass (online max) version of phases 1 and 2 for an unsplit vocabulary.
cudaError_t ce_fwd_local(DType dtype, const void* logits, const int64_t* target, float* row_max,
                         float* sum_exp, float* target_logit, int64_t rows, int64_t vocab,
                         cudaStream_t stream);
// dlogits = grad[row] * (exp(x - max) / sum_exp - onehot(target - vocab_start)).
cudaError_t ce_bwd(DType dtype, const void* logits, const int64_t* target, const float* row_max,
                   const float* sum_exp, const float* grad, void* dlogits, int64_t rows,
                   int64_t vocab, int64_t vocab_start, cudaStream_t stream);

}  // namespace megastack
