// RMSNorm forward/backward, optionally fused with the residual add that precedes it:
//   s = x + residual (rounded to x's dtype, exactly as the unfused add), y = s * rstd * w,
//   rstd = 1 / sqrt(mean(s^2) + eps). Statistics and products are accumulated in fp32.
// One block normalises one row. Rows of up to kRegVecs vectors per thread (hidden <= 32768 in
// bf16) take the register path: each thread issues all its loads at once and keeps its slice of
// the row in registers between the reduction and the output, so the row is read from HBM once
// with several loads in flight per thread. Longer rows take the loop path, which re-reads the
// row. The backward keeps a per-block fp32 partial of the weight gradient (registers on the
// register path, shared memory on the loop path); a second kernel reduces the partials.

#include <atomic>
#include <type_traits>

#include "common.cuh"

namespace megastack {
namespace {

// Vectors per thread on the register path: enough loads in flight per thread to cover HBM
// latency at 128-thread blocks (hidden 4096 in bf16). The forward keeps its row in the storage
// type (16 bytes per vector) and is held to 64 registers (__launch_bounds__(1024)), so 8+
// blocks fit per SM and their loads are all in flight at once.
constexpr int kRegVecs = 4;
constexpr int kMaxThreads = 1024;
// The backward holds its rows widened to fp32 plus the weight-gradient partial (~128
// registers), so its blocks stop at 256 threads: longer rows take the loop path.
constexpr int kBwdMaxThreads = 256;

// Thread t owns vectors t, t + blockDim.x, ... (coalesced for every k).
// 32-bit: a register-path row has at most kRegVecs * kMaxThreads vectors.
__device__ __forceinline__ int reg_vec_index(int k) {
  return static_cast<int>(threadIdx.x + k * blockDim.x);
}

template <typename T, typename W, int VEC, bool RESID>
__global__ void __launch_bounds__(kMaxThreads)
    rmsnorm_fwd_reg_kernel(const T* __restrict__ x, const T* __restrict__ residual,
                           const W* __restrict__ weight, T* __restrict__ y,
                           T* __restrict__ sum_out, float* __restrict__ rstd_out, int64_t hidden,
                           float eps) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const int nvec = static_cast<int>(hidden / VEC);
  const int64_t base = row * hidden;
  x += base;
  y += base;
  if constexpr (RESID) {
    residual += base;
    sum_out += base;
  }

  // The normalised input: x, or x + residual rounded to T exactly as the unfused add.
  Vec<T, VEC> in[kRegVecs];
#pragma unroll
  for (int k = 0; k < kRegVecs; ++k) {
    const int v = reg_vec_index(k);
    if (v < nvec) in[k] = load_raw<T, VEC>(x + v * VEC);
  }
  if constexpr (RESID) {
    Vec<T, VEC> res[kRegVecs];
#pragma unroll
    for (int k = 0; k < kRegVecs; ++k) {
      const int v = reg_vec_index(k);
      if (v < nvec) res[k] = load_raw<T, VEC>(residual + v * VEC);
    }
#pragma unroll
    for (int k = 0; k < kRegVecs; ++k) {
      const int v = reg_vec_index(k);
      if (v >= nvec) continue;
      float a[VEC], r[VEC];
      unpack(in[k], a);
      unpack(res[k], r);
#pragma unroll
      for (int i = 0; i < VEC; ++i) a[i] += r[i];
      in[k] = pack<T, VEC>(a);
      store_raw(sum_out + v * VEC, in[k]);
    }
  }
  float sq = 0.f;
#pragma unroll
  for (int k = 0; k < kRegVecs; ++k) {
    if (reg_vec_index(k) >= nvec) continue;
    float a[VEC];
    unpack(in[k], a);
#pragma unroll
    for (int i = 0; i < VEC; ++i) sq += a[i] * a[i];
  }
  sq = block_sum(sq, scratch);
  const float rstd = rsqrtf(sq / static_cast<float>(hidden) + eps);
  if (threadIdx.x == 0) rstd_out[row] = rstd;

#pragma unroll
  for (int k = 0; k < kRegVecs; ++k) {
    const int v = reg_vec_index(k);
    if (v >= nvec) continue;
    float a[VEC], w[VEC];
    unpack(in[k], a);
    load_vec<W, VEC>(weight + v * VEC, w);
#pragma unroll
    for (int i = 0; i < VEC; ++i) a[i] = a[i] * rstd * w[i];
    store_vec<T, VEC>(y + v * VEC, a);
  }
}

// Writes a register-path block's weight-gradient partial (thread t's columns, as owned by
// reg_vec_index) to its row of `partial`, which the column reduction then sums.
template <int VEC>
__device__ __forceinline__ void store_partial_row(const float (&dw_acc)[kRegVecs][VEC],
                                                  float* __restrict__ partial, int64_t hidden,
                                                  int nvec) {
  float* part = partial + static_cast<int64_t>(blockIdx.x) * hidden;
#pragma unroll
  for (int k = 0; k < kRegVecs; ++k) {
    const int v = reg_vec_index(k);
    if (v >= nvec) continue;
#pragma unroll
    for (int i = 0; i < VEC; ++i) part[v * VEC + i] = dw_acc[k][i];
  }
}

template <typename T, typename W, int VEC, bool DSUM>
__global__ void __launch_bounds__(kBwdMaxThreads)
    rmsnorm_bwd_reg_kernel(const T* __restrict__ dy, const T* __restrict__ xin,
                           const float* __restrict__ rstd, const W* __restrict__ weight,
                           const T* __restrict__ dsum, T* __restrict__ dx,
                           float* __restrict__ partial, int64_t rows, int64_t hidden) {
  __shared__ float scratch[32];
  const int nvec = static_cast<int>(hidden / VEC);
  const float inv_h = 1.f / static_cast<float>(hidden);

  // Each thread owns the same columns in every row: its weight-gradient partial stays in
  // registers, with no atomics and no barrier.
  float dw_acc[kRegVecs][VEC] = {};

  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t base = row * hidden;
    const float r = rstd[row];
    // Registers bound the loads in flight to one row per block; prefetching this block's next
    // row (and this row's dsum, read after the reduction) into L2 costs none and overlaps the
    // next row's HBM latency with this row's reduction and stores.
    const int64_t next = base + static_cast<int64_t>(gridDim.x) * hidden;
#pragma unroll
    for (int k = 0; k < kRegVecs; ++k) {
      const int v = reg_vec_index(k);
      if (v >= nvec) continue;
      if (row + gridDim.x < rows) {
        prefetch_l2(dy + next + v * VEC);
        prefetch_l2(xin + next + v * VEC);
      }
      if constexpr (DSUM) prefetch_l2(dsum + base + v * VEC);
    }
    float g[kRegVecs][VEC], xh[kRegVecs][VEC];
#pragma unroll
    for (int k = 0; k < kRegVecs; ++k) {
      const int v = reg_vec_index(k);
      if (v >= nvec) continue;
      load_vec<T, VEC>(dy + base + v * VEC, g[k]);
      load_vec<T, VEC>(xin + base + v * VEC, xh[k]);
    }
    float dot = 0.f;  // sum_i (dy_i * w_i) * xhat_i
#pragma unroll
    for (int k = 0; k < kRegVecs; ++k) {
      const int v = reg_vec_index(k);
      if (v >= nvec) continue;
      float w[VEC];
      load_vec<W, VEC>(weight + v * VEC, w);
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        xh[k][i] *= r;
        dw_acc[k][i] += g[k][i] * xh[k][i];
        g[k][i] *= w[i];  // from here on g holds dy * w
        dot += g[k][i] * xh[k][i];
      }
    }
    dot = block_sum(dot, scratch) * inv_h;

#pragma unroll
    for (int k = 0; k < kRegVecs; ++k) {
      const int v = reg_vec_index(k);
      if (v >= nvec) continue;
      float out[VEC];
#pragma unroll
      for (int i = 0; i < VEC; ++i) out[i] = r * (g[k][i] - xh[k][i] * dot);
      if constexpr (DSUM) {
        float ds[VEC];
        load_vec<T, VEC>(dsum + base + v * VEC, ds);
#pragma unroll
        for (int i = 0; i < VEC; ++i) out[i] += ds[i];
      }
      store_vec<T, VEC>(dx + base + v * VEC, out);
    }
  }

  store_partial_row(dw_acc, partial, hidden, nvec);
}

// Staged backward (experimental, selected with set_rmsnorm_bwd_path(kStaged*) until a GPU run
// measures it against the register path): the register path holds a row's loads in registers,
// so ~4 blocks per SM keep only one row each in flight. Here each block streams its rows through
// a ring of STAGES shared-memory slots with cp.async: while it reduces one row, the next
// STAGES - 1 rows are loading, and no register waits on them. More slots mean more rows in
// flight per block but fewer blocks per SM (at hidden 4096 in bf16: 2 slots -> 6 blocks of 1
// row in flight, 3 -> 4 blocks of 2, 4 -> 3 blocks of 3). Each thread copies exactly the
// vectors it later reads, so a slot needs no barrier between its copy and its use.
template <typename T, typename W, int VEC, bool DSUM, int STAGES>
__global__ void __launch_bounds__(kBwdMaxThreads)
    rmsnorm_bwd_staged_kernel(const T* __restrict__ dy, const T* __restrict__ xin,
                              const float* __restrict__ rstd, const W* __restrict__ weight,
                              const T* __restrict__ dsum, T* __restrict__ dx,
                              float* __restrict__ partial, int64_t rows, int64_t hidden) {
  static_assert(VEC * sizeof(T) == 16, "cp.async moves 16-byte vectors");
  static_assert(STAGES >= 2, "a ring of one slot cannot load ahead");
  constexpr int kInputs = DSUM ? 3 : 2;  // dy, xin[, dsum] rows per slot
  extern __shared__ __align__(16) unsigned char slot_bytes[];
  T* slots = reinterpret_cast<T*>(slot_bytes);  // [STAGES][kInputs][hidden]
  __shared__ float scratch[32];
  const int nvec = static_cast<int>(hidden / VEC);
  const float inv_h = 1.f / static_cast<float>(hidden);
  const int64_t slot_elems = kInputs * hidden;

  // Starts the copies of `row` into `slot` and commits them as one group (empty past the end,
  // so that every thread's group count stays in step with the rows).
  auto stage_row = [&](int64_t row, int slot) {
    if (row < rows) {
      T* dst = slots + slot * slot_elems;
      const int64_t base = row * hidden;
#pragma unroll
      for (int k = 0; k < kRegVecs; ++k) {
        const int v = reg_vec_index(k);
        if (v >= nvec) continue;
        cp_async_16(dst + v * VEC, dy + base + v * VEC);
        cp_async_16(dst + hidden + v * VEC, xin + base + v * VEC);
        if constexpr (DSUM) cp_async_16(dst + 2 * hidden + v * VEC, dsum + base + v * VEC);
      }
    }
    cp_async_commit();
  };

  float dw_acc[kRegVecs][VEC] = {};

  const int64_t stride = gridDim.x;
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) stage_row(blockIdx.x + s * stride, s);

  int slot = 0;
  for (int64_t row = blockIdx.x; row < rows; row += stride) {
    // The slot refilled here held the previous row, which this thread has finished reading.
    stage_row(row + (STAGES - 1) * stride, (slot + STAGES - 1) % STAGES);
    const float r = rstd[row];
    cp_async_wait<STAGES - 1>();
    const T* g_row = slots + slot * slot_elems;
    const T* x_row = g_row + hidden;

    float dot = 0.f;  // sum_i (dy_i * w_i) * xhat_i
#pragma unroll
    for (int k = 0; k < kRegVecs; ++k) {
      const int v = reg_vec_index(k);
      if (v >= nvec) continue;
      float g[VEC], a[VEC], w[VEC];
      load_vec<T, VEC>(g_row + v * VEC, g);
      load_vec<T, VEC>(x_row + v * VEC, a);
      load_vec<W, VEC>(weight + v * VEC, w);
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        const float xhat = a[i] * r;
        dw_acc[k][i] += g[i] * xhat;
        dot += g[i] * w[i] * xhat;
      }
    }
    dot = block_sum(dot, scratch) * inv_h;

    // Second pass from shared memory: re-reading costs less than holding the row in registers.
#pragma unroll
    for (int k = 0; k < kRegVecs; ++k) {
      const int v = reg_vec_index(k);
      if (v >= nvec) continue;
      float g[VEC], a[VEC], w[VEC], out[VEC];
      load_vec<T, VEC>(g_row + v * VEC, g);
      load_vec<T, VEC>(x_row + v * VEC, a);
      load_vec<W, VEC>(weight + v * VEC, w);
#pragma unroll
      for (int i = 0; i < VEC; ++i) out[i] = r * (g[i] * w[i] - a[i] * r * dot);
      if constexpr (DSUM) {
        float ds[VEC];
        load_vec<T, VEC>(g_row + 2 * hidden + v * VEC, ds);
#pragma unroll
        for (int i = 0; i < VEC; ++i) out[i] += ds[i];
      }
      store_vec<T, VEC>(dx + row * hidden + v * VEC, out);
    }
    slot = (slot + 1) % STAGES;
  }
  cp_async_wait<0>();  // only empty groups remain; leave none outstanding at exit

  store_partial_row(dw_acc, partial, hidden, nvec);
}

// Loop path, for rows longer than the register path holds.
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

// dw[c] = sum over blocks of partial[b, c]. A block takes kReduceCols adjacent columns (one
// coalesced 128-byte read per partial row) and splits the partial rows over kReduceLanes thread
// rows, so hundreds of partial rows are summed by many loads in flight, not one serial chain.
constexpr int kReduceCols = 32;
constexpr int kReduceLanes = 16;

template <typename W>
__global__ void reduce_columns_kernel(const float* __restrict__ partial, W* __restrict__ dw,
                                      int64_t nblocks, int64_t hidden) {
  __shared__ float tile[kReduceLanes][kReduceCols + 1];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kReduceCols + threadIdx.x;
  float acc = 0.f;
  if (c < hidden) {
#pragma unroll 4
    for (int64_t b = threadIdx.y; b < nblocks; b += kReduceLanes) acc += partial[b * hidden + c];
  }
  tile[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < hidden) {
#pragma unroll
    for (int l = 1; l < kReduceLanes; ++l) acc += tile[l][threadIdx.x];
    dw[c] = from_float<W>(acc);
  }
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

struct BwdKernel {
  const void* kernel;
  int threads;
  size_t smem;
};

// Threads per block on the register path for a row of `nvec` vectors, or 0 when the row is too
// long for it (the loop path then runs).
inline int reg_path_threads(int64_t nvec, int max_threads) {
  const int64_t per_thread = (nvec + kRegVecs - 1) / kRegVecs;
  return per_thread > max_threads ? 0 : row_block_size(per_thread, max_threads);
}

template <typename T, typename W, int VEC, bool RESID>
void launch_fwd(const T* x, const T* residual, const W* weight, T* y, T* sum_out, float* rstd,
                int64_t rows, int64_t hidden, float eps, cudaStream_t stream) {
  const int64_t nvec = hidden / VEC;
  const int reg_threads = reg_path_threads(nvec, kMaxThreads);
  if (reg_threads > 0) {
    rmsnorm_fwd_reg_kernel<T, W, VEC, RESID><<<rows, reg_threads, 0, stream>>>(
        x, residual, weight, y, sum_out, rstd, hidden, eps);
  } else {
    rmsnorm_fwd_kernel<T, W, VEC, RESID><<<rows, row_block_size(nvec, 512), 0, stream>>>(
        x, residual, weight, y, sum_out, rstd, hidden, eps);
  }
}

// Which backward kernel serves register-path rows (kernels.h); the register path until a GPU
// run shows the staged one faster.
std::atomic<int> g_bwd_path{static_cast<int>(RmsNormBwdPath::kRegister)};

// Dynamic shared memory the staged backward needs, or 0 when its slots do not fit in a block
// beside its static block_sum scratch.
template <typename T, bool DSUM>
size_t staged_smem_bytes(int64_t hidden, int stages) {
  const size_t bytes = static_cast<size_t>(stages) * (DSUM ? 3 : 2) * hidden * sizeof(T);
  const auto limit =
      static_cast<size_t>(device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin));
  return bytes + 32 * sizeof(float) <= limit ? bytes : 0;
}

template <typename T, typename W, int VEC, bool DSUM>
BwdKernel bwd_kernel(int64_t hidden) {
  const int64_t nvec = hidden / VEC;
  const int reg_threads = reg_path_threads(nvec, kBwdMaxThreads);
  const void* kernel = nullptr;
  int threads = 0;
  size_t smem = 0;
  if constexpr (VEC * sizeof(T) == 16) {
    // The enum's value is the staged kernel's slot count (0 for the register path).
    const int stages = g_bwd_path.load(std::memory_order_relaxed);
    if (stages > 0 && reg_threads > 0) smem = staged_smem_bytes<T, DSUM>(hidden, stages);
    if (smem > 0) {
      switch (stages) {
        case 2: kernel = reinterpret_cast<const void*>(
                    rmsnorm_bwd_staged_kernel<T, W, VEC, DSUM, 2>); break;
        case 3: kernel = reinterpret_cast<const void*>(
                    rmsnorm_bwd_staged_kernel<T, W, VEC, DSUM, 3>); break;
        default: kernel = reinterpret_cast<const void*>(
                     rmsnorm_bwd_staged_kernel<T, W, VEC, DSUM, 4>); break;
      }
      threads = reg_threads;
    }
  }
  if (kernel == nullptr && reg_threads > 0) {
    kernel = reinterpret_cast<const void*>(rmsnorm_bwd_reg_kernel<T, W, VEC, DSUM>);
    threads = reg_threads;
  } else if (kernel == nullptr) {
    // The loop path keeps its `hidden`-float weight-gradient partial in shared memory.
    kernel = reinterpret_cast<const void*>(rmsnorm_bwd_kernel<T, W, VEC, DSUM>);
    threads = row_block_size(nvec, 512);
    smem = static_cast<size_t>(hidden) * sizeof(float);
  }
  // Past 48 KB per block (dynamic plus the kernels' static block_sum scratch) a kernel must opt
  // in; at hidden 4096 the staged slots alone are exactly 48 KB.
  if (smem + 32 * sizeof(float) > 48 * 1024) allow_dynamic_smem(kernel, smem);
  return {kernel, threads, smem};
}

// Resolves the backward kernel instance for these arguments and hands it to f.
template <typename F>
void with_bwd_kernel(DType x_dtype, DType w_dtype, const void* const* ptrs, int nptrs,
                     const void* weight, bool has_dsum, int64_t hidden, F&& f) {
  dispatch_xw(x_dtype, w_dtype, [&](auto* tt, auto* wt) {
    using T = std::remove_pointer_t<decltype(tt)>;
    using W = std::remove_pointer_t<decltype(wt)>;
    constexpr int V = vec_width<T>();
    const bool vec = can_vectorize<T, W>(hidden, ptrs, nptrs, weight);
    BwdKernel k;
    if (vec) {
      k = has_dsum ? bwd_kernel<T, W, V, true>(hidden) : bwd_kernel<T, W, V, false>(hidden);
    } else {
      k = has_dsum ? bwd_kernel<T, W, 1, true>(hidden) : bwd_kernel<T, W, 1, false>(hidden);
    }
    f(k, static_cast<W*>(nullptr));
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
    const auto* xp = static_cast<const T*>(x);
    const auto* rp = static_cast<const T*>(residual);
    const auto* wp = static_cast<const W*>(weight);
    auto* yp = static_cast<T*>(y);
    auto* sp = static_cast<T*>(sum_out);
    if (vec && resid) {
      launch_fwd<T, W, V, true>(xp, rp, wp, yp, sp, rstd, rows, hidden, eps, stream);
    } else if (vec) {
      launch_fwd<T, W, V, false>(xp, rp, wp, yp, sp, rstd, rows, hidden, eps, stream);
    } else if (resid) {
      launch_fwd<T, W, 1, true>(xp, rp, wp, yp, sp, rstd, rows, hidden, eps, stream);
    } else {
      launch_fwd<T, W, 1, false>(xp, rp, wp, yp, sp, rstd, rows, hidden, eps, stream);
    }
  });
  return cudaGetLastError();
}

int64_t rmsnorm_bwd_partial_rows(DType x_dtype, DType w_dtype, const void* dy, const void* xin,
                                 const void* weight, const void* dsum, const void* dx,
                                 int64_t rows, int64_t hidden) {
  int64_t blocks = 1;
  if (rows == 0 || hidden == 0) return blocks;
  // The same pointer list as rmsnorm_bwd, so that both pick the same kernel. As many blocks as
  // fit at once: each loops over rows, and every block adds one row of partials to reduce.
  const void* ptrs[] = {dy, xin, dsum, dx};
  with_bwd_kernel(x_dtype, w_dtype, ptrs, 4, weight, dsum != nullptr, hidden,
                  [&](const BwdKernel& k, auto*) {
    const int per_sm = blocks_per_sm(k.kernel, k.threads, k.smem);
    blocks = static_cast<int64_t>(device_attribute(cudaDevAttrMultiProcessorCount)) *
             (per_sm > 0 ? per_sm : 1);
  });
  return blocks < rows ? blocks : rows;
}

cudaError_t rmsnorm_bwd(DType x_dtype, DType w_dtype, const void* dy, const void* xin,
                        const float* rstd, const void* weight, const void* dsum, void* dx,
                        void* dweight, float* partial, int64_t partial_rows, int64_t rows,
                        int64_t hidden, cudaStream_t stream) {
  if (rows == 0 || hidden == 0) return cudaSuccess;
  if (partial_rows < 1) return cudaErrorInvalidValue;
  const void* ptrs[] = {dy, xin, dsum, dx};
  // One block per partial row (blocks stride over the rows, so any count is correct).
  const int64_t blocks = partial_rows < rows ? partial_rows : rows;
  cudaError_t err = cudaSuccess;
  with_bwd_kernel(x_dtype, w_dtype, ptrs, 4, weight, dsum != nullptr, hidden,
                  [&](const BwdKernel& k, auto* wt) {
    using W = std::remove_pointer_t<decltype(wt)>;
    void* args[] = {const_cast<void**>(&dy),    const_cast<void**>(&xin),
                    const_cast<float**>(&rstd), const_cast<void**>(&weight),
                    const_cast<void**>(&dsum),  &dx,
                    &partial,                   &rows,
                    &hidden};
    err = cudaLaunchKernel(k.kernel, dim3(static_cast<unsigned int>(blocks)), dim3(k.threads),
                           args, k.smem, stream);
    if (err != cudaSuccess) return;
    const unsigned int rblocks =
        static_cast<unsigned int>((hidden + kReduceCols - 1) / kReduceCols);
    reduce_columns_kernel<W><<<rblocks, dim3(kReduceCols, kReduceLanes), 0, stream>>>(
        partial, static_cast<W*>(dweight), blocks, hidden);
    err = cudaGetLastError();
  });
  return err;
}

void set_rmsnorm_bwd_path(RmsNormBwdPath path) {
  g_bwd_path.store(static_cast<int>(path), std::memory_order_relaxed);
}

RmsNormBwdPath rmsnorm_bwd_path() {
  return static_cast<RmsNormBwdPath>(g_bwd_path.load(std::memory_order_relaxed));
}

}  // namespace megastack
