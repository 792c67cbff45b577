// SwiGLU on megatron-core's fc1 output: each row of x is [gate (ffn) ; up (ffn)], and
// y = silu(gate) * up. Backward: with s = sigmoid(gate),
//   d_gate = dy * up * s * (1 + gate * (1 - s)),   d_up = dy * gate * s.
// Elementwise and memory bound: 16-byte vectors of each row half, rows tiled across blocks.


#include "common.cuh"

namespace megastack {
namespace {

__device__ __forceinline__ float sigmoidf(float g) { return 1.f / (1.f + __expf(-g)); }

// Vectors per thread: its loads are all issued before the first use.
constexpr int kVecsPerThread = 2;
constexpr int kMaxThreads = 256;
constexpr int64_t kMaxGridY = 65535;

// Blocks tile a row's vectors along x (thread t of block bx owns vectors
// bx * blockDim.x * kVecsPerThread + t + k * blockDim.x) and loop over rows along y, so a
// vector's row and column need no division.
__device__ __forceinline__ int64_t first_vec() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x * kVecsPerThread + threadIdx.x;
}

template <typename T, int VEC>
__global__ void swiglu_fwd_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t rows,
                                  int64_t ffn) {
  const int64_t per_row = ffn / VEC;
  const int64_t first = first_vec();
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const T* gate = x + row * 2 * ffn;
    const T* up = gate + ffn;
    float g[kVecsPerThread][VEC], u[kVecsPerThread][VEC];
#pragma unroll
    for (int k = 0; k < kVecsPerThread; ++k) {
      const int64_t v = first + k * blockDim.x;
      if (v >= per_row) continue;
      load_vec<T, VEC>(gate + v * VEC, g[k]);
      load_vec<T, VEC>(up + v * VEC, u[k]);
    }
#pragma unroll
    for (int k = 0; k < kVecsPerThread; ++k) {
      const int64_t v = first + k * blockDim.x;
      if (v >= per_row) continue;
      float out[VEC];
#pragma unroll
      for (int i = 0; i < VEC; ++i) out[i] = g[k][i] * sigmoidf(g[k][i]) * u[k][i];
      store_vec<T, VEC>(y + row * ffn + v * VEC, out);
    }
  }
}

template <typename T, int VEC>
__global__ void swiglu_bwd_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                                  T* __restrict__ dx, int64_t rows, int64_t ffn) {
  const int64_t per_row = ffn / VEC;
  const int64_t first = first_vec();
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const T* gate = x + row * 2 * ffn;
    const T* up = gate + ffn;
    const T* dyr = dy + row * ffn;
    float g[kVecsPerThread][VEC], u[kVecsPerThread][VEC], d[kVecsPerThread][VEC];
#pragma unroll
    for (int k = 0; k < kVecsPerThread; ++k) {
      const int64_t v = first + k * blockDim.x;
      if (v >= per_row) continue;
      load_vec<T, VEC>(gate + v * VEC, g[k]);
      load_vec<T, VEC>(up + v * VEC, u[k]);
      load_vec<T, VEC>(dyr + v * VEC, d[k]);
    }
    T* dgate = dx + row * 2 * ffn;
    T* dup = dgate + ffn;
#pragma unroll
    for (int k = 0; k < kVecsPerThread; ++k) {
      const int64_t v = first + k * blockDim.x;
      if (v >= per_row) continue;
      float dg[VEC], du[VEC];
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        const float s = sigmoidf(g[k][i]);
        const float silu = g[k][i] * s;
        du[i] = d[k][i] * silu;
        dg[i] = d[k][i] * u[k][i] * (s + silu * (1.f - s));
      }
      store_vec<T, VEC>(dgate + v * VEC, dg);
      store_vec<T, VEC>(dup + v * VEC, du);
    }
  }
}

// Grid and block for `rows` rows of `per_row` vectors.
struct RowTiling {
  dim3 grid;
  dim3 block;
};

inline RowTiling row_tiling(int64_t rows, int64_t per_row) {
  const int threads = row_block_size((per_row + kVecsPerThread - 1) / kVecsPerThread, kMaxThreads);
  const int64_t per_block = static_cast<int64_t>(threads) * kVecsPerThread;
  const int64_t gx = (per_row + per_block - 1) / per_block;
  const int64_t gy = rows < kMaxGridY ? rows : kMaxGridY;
  return {dim3(static_cast<unsigned int>(gx), static_cast<unsigned int>(gy)), dim3(threads)};
}

template <typename T>
bool can_vectorize(int64_t ffn, std::initializer_list<const void*> ptrs) {
  constexpr int V = vec_width<T>();
  if (ffn % V != 0) return false;
  for (const void* p : ptrs)
    if (!aligned(p, 16)) return false;
  return true;
}

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
      const RowTiling t = row_tiling(rows, ffn / V);
      swiglu_fwd_kernel<T, V><<<t.grid, t.block, 0, stream>>>(xp, yp, rows, ffn);
    } else {
      const RowTiling t = row_tiling(rows, ffn);
      swiglu_fwd_kernel<T, 1><<<t.grid, t.block, 0, stream>>>(xp, yp, rows, ffn);
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
      const RowTiling t = row_tiling(rows, ffn / V);
      swiglu_bwd_kernel<T, V><<<t.grid, t.block, 0, stream>>>(dyp, xp, dxp, rows, ffn);
    } else {
      const RowTiling t = row_tiling(rows, ffn);
      swiglu_bwd_kernel<T, 1><<<t.grid, t.block, 0, stream>>>(dyp, xp, dxp, rows, ffn);
    }
  });
  return cudaGetLastError();
}

}  // namespace megastack
