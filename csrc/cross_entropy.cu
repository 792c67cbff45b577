// Vocab-parallel cross entropy, as the phases between megatron-core's tensor-parallel
// all-reduces (done in Python):
//   1. ce_row_max:        m_local = max_j x[j]                      -> all-reduce MAX
//   2. ce_sumexp_target:  S_local = sum_j exp(x[j] - m), x[t] - m  -> all-reduce SUM
//   loss = log(S) - (x[t] - m);  backward: dx[j] = g * (exp(x[j] - m) / S - [j == t]).
// ce_fwd_local fuses 1 and 2 with an online max for an unsplit vocabulary (one read of the
// logits instead of two). One block per row; logits are read in 16-byte vectors when aligned.

#include "common.cuh"

namespace megastack {
namespace {

constexpr int kThreads = 512;

template <typename T, int VEC>
__global__ void row_max_kernel(const T* __restrict__ logits, float* __restrict__ row_max,
                               int64_t vocab) {
  __shared__ float scratch[32];
  const T* xr = logits + static_cast<int64_t>(blockIdx.x) * vocab;
  float m = -INFINITY;
  for (int64_t v = threadIdx.x; v < vocab / VEC; v += blockDim.x) {
    float a[VEC];
    load_vec<T, VEC>(xr + v * VEC, a);
#pragma unroll
    for (int k = 0; k < VEC; ++k) m = fmaxf(m, a[k]);
  }
  m = block_max(m, scratch);
  if (threadIdx.x == 0) row_max[blockIdx.x] = m;
}

// Target logit relative to the max, or 0 when the target lives in another rank's vocab slice.
template <typename T>
__device__ __forceinline__ float target_minus_max(const T* xr, int64_t target,
                                                  int64_t vocab_start, int64_t vocab, float m) {
  const int64_t local = target - vocab_start;
  return (local >= 0 && local < vocab) ? to_float(xr[local]) - m : 0.f;
}

template <typename T, int VEC>
__global__ void sumexp_target_kernel(const T* __restrict__ logits,
                                     const int64_t* __restrict__ target,
                                     const float* __restrict__ row_max,
                                     float* __restrict__ sum_exp,
                                     float* __restrict__ target_logit, int64_t vocab,
                                     int64_t vocab_start) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const T* xr = logits + row * vocab;
  const float m = row_max[row];
  float acc = 0.f;
  for (int64_t v = threadIdx.x; v < vocab / VEC; v += blockDim.x) {
    float a[VEC];
    load_vec<T, VEC>(xr + v * VEC, a);
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc += __expf(a[k] - m);
  }
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) {
    sum_exp[row] = acc;
    target_logit[row] = target_minus_max(xr, target[row], vocab_start, vocab, m);
  }
}

// Merge running (max, sum of exp(x - max)) pairs; an empty pair is (-inf, 0).
__device__ __forceinline__ void merge_online(float& m, float& s, float m2, float s2) {
  const float mn = fmaxf(m, m2);
  if (mn == -INFINITY) return;  // both empty: exp(-inf - -inf) would be NaN
  s = s * __expf(m - mn) + s2 * __expf(m2 - mn);
  m = mn;
}

template <typename T, int VEC>
__global__ void fwd_local_kernel(const T* __restrict__ logits, const int64_t* __restrict__ target,
                                 float* __restrict__ row_max, float* __restrict__ sum_exp,
                                 float* __restrict__ target_logit, int64_t vocab) {
  __shared__ float sm[32], ss[32];
  const int64_t row = blockIdx.x;
  const T* xr = logits + row * vocab;
  float m = -INFINITY, s = 0.f;
  for (int64_t v = threadIdx.x; v < vocab / VEC; v += blockDim.x) {
    float a[VEC];
    load_vec<T, VEC>(xr + v * VEC, a);
    float vm = a[0];
#pragma unroll
    for (int k = 1; k < VEC; ++k) vm = fmaxf(vm, a[k]);
    float vs = 0.f;
#pragma unroll
    for (int k = 0; k < VEC; ++k) vs += __expf(a[k] - vm);
    merge_online(m, s, vm, vs);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, o);
    const float s2 = __shfl_xor_sync(0xffffffffu, s, o);
    merge_online(m, s, m2, s2);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  if (lane == 0) {
    sm[warp] = m;
    ss[warp] = s;
  }
  __syncthreads();
  if (warp == 0) {
    m = lane < nwarps ? sm[lane] : -INFINITY;
    s = lane < nwarps ? ss[lane] : 0.f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float m2 = __shfl_xor_sync(0xffffffffu, m, o);
      const float s2 = __shfl_xor_sync(0xffffffffu, s, o);
      merge_online(m, s, m2, s2);
    }
    if (lane == 0) {
      row_max[row] = m;
      sum_exp[row] = s;
      target_logit[row] = target_minus_max(xr, target[row], 0, vocab, m);
    }
  }
}

template <typename T, int VEC>
__global__ void bwd_kernel(const T* __restrict__ logits, const int64_t* __restrict__ target,
                           const float* __restrict__ row_max, const float* __restrict__ sum_exp,
                           const float* __restrict__ grad, T* __restrict__ dlogits, int64_t vocab,
                           int64_t vocab_start) {
  const int64_t row = blockIdx.x;
  const T* xr = logits + row * vocab;
  T* dr = dlogits + row * vocab;
  const float m = row_max[row];
  const float g = grad[row];
  const float scale = g / sum_exp[row];
  const int64_t local = target[row] - vocab_start;  // outside [0, vocab): not on this rank
  for (int64_t v = threadIdx.x; v < vocab / VEC; v += blockDim.x) {
    float a[VEC];
    load_vec<T, VEC>(xr + v * VEC, a);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      a[k] = __expf(a[k] - m) * scale;
      if (v * VEC + k == local) a[k] -= g;
    }
    store_vec<T, VEC>(dr + v * VEC, a);
  }
}

template <typename T>
bool can_vectorize(int64_t vocab, std::initializer_list<const void*> ptrs) {
  if (vocab % vec_width<T>() != 0) return false;
  for (const void* p : ptrs)
    if (!aligned(p, 16)) return false;
  return true;
}

int threads_for(int64_t units) { return row_block_size(units, kThreads); }

}  // namespace

cudaError_t ce_row_max(DType dtype, const void* logits, float* row_max, int64_t rows,
                       int64_t vocab, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  MS_DISPATCH(dtype, [&] {
    using T = scalar_t;
    constexpr int V = vec_width<T>();
    const auto* xp = static_cast<const T*>(logits);
    if (can_vectorize<T>(vocab, {logits})) {
      row_max_kernel<T, V><<<rows, threads_for(vocab / V), 0, stream>>>(xp, row_max, vocab);
    } else {
      row_max_kernel<T, 1><<<rows, threads_for(vocab), 0, stream>>>(xp, row_max, vocab);
    }
  });
  return cudaGetLastError();
}

cudaError_t ce_sumexp_target(DType dtype, const void* logits, const int64_t* target,
                             const float* row_max, float* sum_exp, float* target_logit,
                             int64_t rows, int64_t vocab, int64_t vocab_start,
                             cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  MS_DISPATCH(dtype, [&] {
    using T = scalar_t;
    constexpr int V = vec_width<T>();
    const auto* xp = static_cast<const T*>(logits);
    if (can_vectorize<T>(vocab, {logits})) {
      sumexp_target_kernel<T, V><<<rows, threads_for(vocab / V), 0, stream>>>(
          xp, target, row_max, sum_exp, target_logit, vocab, vocab_start);
    } else {
      sumexp_target_kernel<T, 1><<<rows, threads_for(vocab), 0, stream>>>(
          xp, target, row_max, sum_exp, target_logit, vocab, vocab_start);
    }
  });
  return cudaGetLastError();
}

cudaError_t ce_fwd_local(DType dtype, const void* logits, const int64_t* target, float* row_max,
                         float* sum_exp, float* target_logit, int64_t rows, int64_t vocab,
                         cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  MS_DISPATCH(dtype, [&] {
    using T = scalar_t;
    constexpr int V = vec_width<T>();
    const auto* xp = static_cast<const T*>(logits);
    if (can_vectorize<T>(vocab, {logits})) {
      fwd_local_kernel<T, V><<<rows, threads_for(vocab / V), 0, stream>>>(
          xp, target, row_max, sum_exp, target_logit, vocab);
    } else {
      fwd_local_kernel<T, 1><<<rows, threads_for(vocab), 0, stream>>>(
          xp, target, row_max, sum_exp, target_logit, vocab);
    }
  });
  return cudaGetLastError();
}

cudaError_t ce_bwd(DType dtype, const void* logits, const int64_t* target, const float* row_max,
                   const float* sum_exp, const float* grad, void* dlogits, int64_t rows,
                   int64_t vocab, int64_t vocab_start, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  MS_DISPATCH(dtype, [&] {
    using T = scalar_t;
    constexpr int V = vec_width<T>();
    const auto* xp = static_cast<const T*>(logits);
    auto* dp = static_cast<T*>(dlogits);
    if (can_vectorize<T>(vocab, {logits, dlogits})) {
      bwd_kernel<T, V><<<rows, threads_for(vocab / V), 0, stream>>>(
          xp, target, row_max, sum_exp, grad, dp, vocab, vocab_start);
    } else {
      bwd_kernel<T, 1><<<rows, threads_for(vocab), 0, stream>>>(
          xp, target, row_max, sum_exp, grad, dp, vocab, vocab_start);
    }
  });
  return cudaGetLastError();
}

}  // namespace megastack
