// SwiGLU on megatron-core's fc1 output: each row of x is [gate (ffn) ; up (ffn)], and
// y = silu(gate) * up. Backward: with s = sigmoid(gate),
//   d_gate = dy * up * s * (1 + gate * (1 - s)),   d_up = dy * gate * s.
// Elementwise and memory bound: grid-stride over 16-byte vectors of one row half.


#include "common.cuh"

namespace megastack {
namespace {

__device__ __forceinline__ float sigmoidf(float g) { return 1.f / (1.f + __expf(-g)); }

template <typename T, int VEC>
__global__ void swiglu_fwd_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t rows,
                                  int64_t ffn) {
  const int64_t per_row = ffn / VEC;
  const int64_t n = rows * per_row;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / per_row;
    const int64_t col = (i - row * per_row) * VEC;
    const T* xr = x + row * 2 * ffn;
    float g[VEC], u[VEC], out[VEC];
    load_vec<T, VEC>(xr + col, g);
    load_vec<T, VEC>(xr + ffn + col, u);
#pragma unroll
    for (int k = 0; k < VEC; ++k) out[k] = g[k] * sigmoidf(g[k]) * u[k];
    store_vec<T, VEC>(y + row * ffn + col, out);
  }
}

template <typename T, int VEC>
__global__ void swiglu_bwd_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                                  T* __restrict__ dx, int64_t rows, int64_t ffn) {
  const int64_t per_row = ffn / VEC;
  const int64_t n = rows * per_row;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / per_row;
    const int64_t col = (i - row * per_row) * VEC;
    const T* xr = x + row * 2 * ffn;
    float g[VEC], u[VEC], d[VEC], dg[VEC], du[VEC];
    load_vec<T, VEC>(xr + col, g);
    load_vec<T, VEC>(xr + ffn + col, u);
    load_vec<T, VEC>(dy + row * ffn + col, d);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const float s = sigmoidf(g[k]);
      const float silu = g[k] * s;
      du[k] = d[k] * silu;
      dg[k] = d[k] * u[k] * (s + silu * (1.f - s));
    }
    T* dxr = dx + row * 2 * ffn;
    store_vec<T, VEC>(dxr + col, dg);
    store_vec<T, VEC>(dxr + ffn + col, du);
  }
}

template <typename T>
bool can_vectorize(int64_t ffn, std::initializer_list<const void*> ptrs) {
  constexpr int V = vec_width<T>();
  if (ffn % V != 0) return false;
  for (const void* p : ptrs)
    if (!aligned(p, 16)) return false;
  return true;
}

constexpr int kThreads = 256;

}  // namespace

cudaError_t swiglu_fwd(DType dtype, const void* x, void* y, int64_t rows, int64_t ffn,
                       cudaStream_t stream) {
  if (rows == 0 || ffn == 0) return cudaSuccess;
  MS_DISPATCH(dtype, [&] {
    using T = scalar_t;
    constexpr int V = vec_width<T>();
    const auto* xp = static_cast<const T*>(x);
    auto* yp = static_cast<T*>(y);
    if (can_vectorize<T>(ffn, {x, y})) {
      const unsigned int blocks = elementwise_blocks(rows * (ffn / V), kThreads);
      swiglu_fwd_kernel<T, V><<<blocks, kThreads, 0, stream>>>(xp, yp, rows, ffn);
    } else {
      const unsigned int blocks = elementwise_blocks(rows * ffn, kThreads);
      swiglu_fwd_kernel<T, 1><<<blocks, kThreads, 0, stream>>>(xp, yp, rows, ffn);
    }
  });
  return cudaGetLastError();
}

cudaError_t swiglu_bwd(DType dtype, const void* dy, const void* x, void* dx, int64_t rows,
                       int64_t ffn, cudaStream_t stream) {
  if (rows == 0 || ffn == 0) return cudaSuccess;
  MS_DISPATCH(dtype, [&] {
    using T = scalar_t;
    constexpr int V = vec_width<T>();
    const auto* dyp = static_cast<const T*>(dy);
    const auto* xp = static_cast<const T*>(x);
    auto* dxp = static_cast<T*>(dx);
    if (can_vectorize<T>(ffn, {dy, x, dx})) {
      const unsigned int blocks = elementwise_blocks(rows * (ffn / V), kThreads);
      swiglu_bwd_kernel<T, V><<<blocks, kThreads, 0, stream>>>(dyp, xp, dxp, rows, ffn);
    } else {
      const unsigned int blocks = elementwise_blocks(rows * ffn, kThreads);
      swiglu_bwd_kernel<T, 1><<<blocks, kThreads, 0, stream>>>(dyp, xp, dxp, rows, ffn);
    }
  });
  return cudaGetLastError();
}

}  // namespace megastack
