// RMSNorm forward/backward, optionally fused with the residual add that precedes it:
//   s = x + residual (rounded to x's dtype, exactly as the unfused add), y = s * rstd * w,
//   rstd = 1 / sqrt(mean(s^2) + eps). Statistics and products are accumulated in fp32.
// One block normalises one row. The backward keeps a per-block fp32 partial of the weight
// gradient in shared memory; a second kernel reduces the partials across blocks.

#include <type_traits>

#include "common.cuh"

namespace megastack {
namespace {

template <typename T, typename W, int VEC, bool RESID>
__global__ void rmsnorm_fwd_kernel(const T* __restrict__ x, const T* __restrict__ residual,
                                   const W* __restrict__ weight, T* __restrict__ y,
                                   T* __restrict__ sum_out, float* __restrict__ rstd_out,
                                   int64_t hidden, float eps) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const int64_t nvec = hidden / VEC;
  const T* xr = x + row * hidden;
  T* sr = RESID ? sum_out + row * hidden : nullptr;

  float sq = 0.f;
  for (int64_t v = threadIdx.x; v < nvec; v += blockDim.x) {
    float a[VEC];
    load_vec<T, VEC>(xr + v * VEC, a);
    if constexpr (RESID) {
      float r[VEC];
      load_vec<T, VEC>(residual + row * hidden + v * VEC, r);
#pragma unroll
      for (int i = 0; i < VEC; ++i) a[i] = to_float(from_float<T>(a[i] + r[i]));
      store_vec<T, VEC>(sr + v * VEC, a);
    }
#pragma unroll
    for (int i = 0; i < VEC; ++i) sq += a[i] * a[i];
  }
  sq = block_sum(sq, scratch);
  const float rstd = rsqrtf(sq / static_cast<float>(hidden) + eps);
  if (threadIdx.x == 0) rstd_out[row] = rstd;

  // The second pass re-reads the row (an L1/L2 hit: this thread just touched it) instead of
  // holding it in registers, so one kernel serves every hidden size. With RESID it reads the
  // sum this same thread wrote above.
  const T* src = RESID ? sr : xr;
  T* yr = y + row * hidden;
  for (int64_t v = threadIdx.x; v < nvec; v += blockDim.x) {
    float a[VEC], w[VEC];
    load_vec<T, VEC>(src + v * VEC, a);
    load_vec<W, VEC>(weight + v * VEC, w);
#pragma unroll
    for (int i = 0; i < VEC; ++i) a[i] = a[i] * rstd * w[i];
    store_vec<T, VEC>(yr + v * VEC, a);
  }
}

template <typename T, typename W, int VEC, bool DSUM>
__global__ void rmsnorm_bwd_kernel(const T* __restrict__ dy, const T* __restrict__ xin,
                                   const float* __restrict__ rstd, const W* __restrict__ weight,
                                   const T* __restrict__ dsum, T* __restrict__ dx,
                                   float* __restrict__ partial, int64_t rows, int64_t hidden) {
  extern __shared__ float dw_acc[];  // `hidden` floats: this block's weight-gradient partial
  __shared__ float scratch[32];
  const int64_t nvec = hidden / VEC;
  const float inv_h = 1.f / static_cast<float>(hidden);

  // Each thread owns the same columns in every row, so the accumulator needs no atomics and
  // no barrier.
  for (int64_t v = threadIdx.x; v < nvec; v += blockDim.x) {
#pragma unroll
    for (int i = 0; i < VEC; ++i) dw_acc[v * VEC + i] = 0.f;
  }

  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const float r = rstd[row];
    const T* dyr = dy + row * hidden;
    const T* xr = xin + row * hidden;

    float dot = 0.f;  // sum_i (dy_i * w_i) * xhat_i
    for (int64_t v = threadIdx.x; v < nvec; v += blockDim.x) {
      float g[VEC], a[VEC], w[VEC];
      load_vec<T, VEC>(dyr + v * VEC, g);
      load_vec<T, VEC>(xr + v * VEC, a);
      load_vec<W, VEC>(weight + v * VEC, w);
#pragma unroll
      for (int i = 0; i < VEC; ++i) dot += g[i] * w[i] * a[i];
    }
    dot = block_sum(dot, scratch) * r * inv_h;

    T* dxr = dx + row * hidden;
    for (int64_t v = threadIdx.x; v < nvec; v += blockDim.x) {
      float g[VEC], a[VEC], w[VEC], out[VEC];
      load_vec<T, VEC>(dyr + v * VEC, g);
      load_vec<T, VEC>(xr + v * VEC, a);
      load_vec<W, VEC>(weight + v * VEC, w);
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        const float xhat = a[i] * r;
        out[i] = r * (g[i] * w[i] - xhat * dot);
        dw_acc[v * VEC + i] += g[i] * xhat;
      }
      if constexpr (DSUM) {
        float ds[VEC];
        load_vec<T, VEC>(dsum + row * hidden + v * VEC, ds);
#pragma unroll
        for (int i = 0; i < VEC; ++i) out[i] += ds[i];
      }
      store_vec<T, VEC>(dxr + v * VEC, out);
    }
  }

  float* part = partial + static_cast<int64_t>(blockIdx.x) * hidden;
  for (int64_t v = threadIdx.x; v < nvec; v += blockDim.x) {
#pragma unroll
    for (int i = 0; i < VEC; ++i) part[v * VEC + i] = dw_acc[v * VEC + i];
  }
}

// dw[c] = sum over blocks of partial[b, c]; consecutive threads read consecutive columns.
template <typename W>
__global__ void reduce_columns_kernel(const float* __restrict__ partial, W* __restrict__ dw,
                                      int64_t nblocks, int64_t hidden) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= hidden) return;
  float acc = 0.f;
  for (int64_t b = 0; b < nblocks; ++b) acc += partial[b * hidden + c];
  dw[c] = from_float<W>(acc);
}

// Calls f(T*, W*) with the element types for (x dtype, weight dtype).
template <typename F>
void dispatch_xw(DType x, DType w, F&& f) {
  if (x == DType::kFloat32) {
    f(static_cast<float*>(nullptr), static_cast<float*>(nullptr));
  } else if (w == DType::kFloat32) {
    f(static_cast<__nv_bfloat16*>(nullptr), static_cast<float*>(nullptr));
  } else {
    f(static_cast<__nv_bfloat16*>(nullptr), static_cast<__nv_bfloat16*>(nullptr));
  }
}

// The vector width every pointer allows: 16-byte accesses of T (and the matching count of W).
template <typename T, typename W>
bool can_vectorize(int64_t hidden, const void* const* t_ptrs, int n_t, const void* w_ptr) {
  constexpr int V = vec_width<T>();
  if (hidden % V != 0) return false;
  for (int i = 0; i < n_t; ++i)
    if (!aligned(t_ptrs[i], V * sizeof(T))) return false;
  return aligned(w_ptr, V * sizeof(W));
}

struct BwdLaunch {
  const void* kernel;
  int threads;
  size_t smem;
  int64_t blocks;
};

template <typename T, typename W, int VEC, bool DSUM>
BwdLaunch bwd_launch(int64_t rows, int64_t hidden) {
  const void* kernel = reinterpret_cast<const void*>(rmsnorm_bwd_kernel<T, W, VEC, DSUM>);
  const int threads = row_block_size(hidden / VEC, 512);
  const size_t smem = static_cast<size_t>(hidden) * sizeof(float);
  if (smem > 48 * 1024) {
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                         static_cast<int>(smem));
  }
  int per_sm = 0;
  cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem);
  int64_t blocks = static_cast<int64_t>(device_attribute(cudaDevAttrMultiProcessorCount)) *
                   (per_sm > 0 ? per_sm : 1);
  if (blocks > rows) blocks = rows;
  if (blocks < 1) blocks = 1;
  return {kernel, threads, smem, blocks};
}

// Resolves the backward kernel instance for these arguments and hands its launch plan to f.
template <typename F>
void with_bwd_plan(DType x_dtype, DType w_dtype, const void* const* ptrs, int nptrs,
                   const void* weight, bool has_dsum, int64_t rows, int64_t hidden, F&& f) {
  dispatch_xw(x_dtype, w_dtype, [&](auto* tt, auto* wt) {
    using T = std::remove_pointer_t<decltype(tt)>;
    using W = std::remove_pointer_t<decltype(wt)>;
    constexpr int V = vec_width<T>();
    const bool vec = can_vectorize<T, W>(hidden, ptrs, nptrs, weight);
    BwdLaunch plan;
    if (vec) {
      plan = has_dsum ? bwd_launch<T, W, V, true>(rows, hidden)
                      : bwd_launch<T, W, V, false>(rows, hidden);
    } else {
      plan = has_dsum ? bwd_launch<T, W, 1, true>(rows, hidden)
                      : bwd_launch<T, W, 1, false>(rows, hidden);
    }
    f(plan, static_cast<W*>(nullptr));
  });
}

}  // namespace

cudaError_t rmsnorm_fwd(DType x_dtype, DType w_dtype, const void* x, const void* residual,
                        const void* weight, void* y, void* sum_out, float* rstd, int64_t rows,
                        int64_t hidden, float eps, cudaStream_t stream) {
  if (rows == 0 || hidden == 0) return cudaSuccess;
  const bool resid = residual != nullptr;
  dispatch_xw(x_dtype, w_dtype, [&](auto* tt, auto* wt) {
    using T = std::remove_pointer_t<decltype(tt)>;
    using W = std::remove_pointer_t<decltype(wt)>;
    constexpr int V = vec_width<T>();
    const void* ptrs[] = {x, residual, y, sum_out};
    const bool vec = can_vectorize<T, W>(hidden, ptrs, 4, weight);
    const int threads = row_block_size(hidden / (vec ? V : 1), 512);
    const auto* xp = static_cast<const T*>(x);
    const auto* rp = static_cast<const T*>(residual);
    const auto* wp = static_cast<const W*>(weight);
    auto* yp = static_cast<T*>(y);
    auto* sp = static_cast<T*>(sum_out);
    if (vec && resid) {
      rmsnorm_fwd_kernel<T, W, V, true><<<rows, threads, 0, stream>>>(xp, rp, wp, yp, sp, rstd,
                                                                       hidden, eps);
    } else if (vec) {
      rmsnorm_fwd_kernel<T, W, V, false><<<rows, threads, 0, stream>>>(xp, rp, wp, yp, sp, rstd,
                                                                        hidden, eps);
    } else if (resid) {
      rmsnorm_fwd_kernel<T, W, 1, true><<<rows, threads, 0, stream>>>(xp, rp, wp, yp, sp, rstd,
                                                                       hidden, eps);
    } else {
      rmsnorm_fwd_kernel<T, W, 1, false><<<rows, threads, 0, stream>>>(xp, rp, wp, yp, sp, rstd,
                                                                        hidden, eps);
    }
  });
  return cudaGetLastError();
}

int64_t rmsnorm_bwd_partial_rows(DType x_dtype, DType w_dtype, const void* dy, const void* xin,
                                 const void* weight, const void* dsum, const void* dx,
                                 int64_t rows, int64_t hidden) {
  int64_t blocks = 1;
  if (rows == 0 || hidden == 0) return blocks;
  // The same pointer list as rmsnorm_bwd, so that both pick the same plan.
  const void* ptrs[] = {dy, xin, dsum, dx};
  with_bwd_plan(x_dtype, w_dtype, ptrs, 4, weight, dsum != nullptr, rows, hidden,
                [&](const BwdLaunch& plan, auto*) { blocks = plan.blocks; });
  return blocks;
}

cudaError_t rmsnorm_bwd(DType x_dtype, DType w_dtype, const void* dy, const void* xin,
                        const float* rstd, const void* weight, const void* dsum, void* dx,
                        void* dweight, float* partial, int64_t rows, int64_t hidden,
                        cudaStream_t stream) {
  if (rows == 0 || hidden == 0) return cudaSuccess;
  const void* ptrs[] = {dy, xin, dsum, dx};
  cudaError_t err = cudaSuccess;
  with_bwd_plan(x_dtype, w_dtype, ptrs, 4, weight, dsum != nullptr, rows, hidden,
                [&](const BwdLaunch& plan, auto* wt) {
    using W = std::remove_pointer_t<decltype(wt)>;
    void* args[] = {const_cast<void**>(&dy),    const_cast<void**>(&xin),
                    const_cast<float**>(&rstd), const_cast<void**>(&weight),
                    const_cast<void**>(&dsum),  &dx,
                    &partial,                   &rows,
                    &hidden};
    err = cudaLaunchKernel(plan.kernel, dim3(static_cast<unsigned int>(plan.blocks)),
                           dim3(plan.threads), args, plan.smem, stream);
    if (err != cudaSuccess) return;
    const int rthreads = 256;
    const unsigned int rblocks = static_cast<unsigned int>((hidden + rthreads - 1) / rthreads);
    reduce_columns_kernel<W><<<rblocks, rthreads, 0, stream>>>(
        partial, static_cast<W*>(dweight), plan.blocks, hidden);
    err = cudaGetLastError();
  });
  return err;
}

}  // namespace megastack
