// Device helpers shared by the kernels: dtype conversion, 16-byte vector access, warp/block
// reductions and the float/bf16 dispatch. No torch headers (see kernels.h).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>
#include <utility>

#include "kernels.h"

namespace megastack {

// Runs `__VA_ARGS__` (a lambda) with `scalar_t` bound to float or __nv_bfloat16.
#define MS_DISPATCH(dtype, ...)                 \
  [&] {                                         \
    if ((dtype) == DType::kFloat32) {           \
      using scalar_t = float;                   \
      return __VA_ARGS__();                     \
    } else {                                    \
      using scalar_t = __nv_bfloat16;           \
      return __VA_ARGS__();                     \
    }                                           \
  }()

// ---- conversions ---------------------------------------------------------------------------
// torch builds extensions with __CUDA_NO_BFLOAT16_CONVERSIONS__, so every bf16 <-> float
// conversion is explicit.

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// ---- vectors -------------------------------------------------------------------------------
// N elements moved as one aligned access: 16 bytes for the vector path, N == 1 for the scalar
// fallback when a row length or a pointer is not aligned.

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

template <typename T, int N>
__device__ __forceinline__ Vec<T, N> load_raw(const T* __restrict__ src) {
  return *reinterpret_cast<const Vec<T, N>*>(src);
}

template <typename T, int N>
__device__ __forceinline__ void unpack(const Vec<T, N>& raw, float (&dst)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) dst[i] = to_float(raw.v[i]);
}

template <typename T, int N>
__device__ __forceinline__ Vec<T, N> pack(const float (&src)[N]) {
  Vec<T, N> raw;
#pragma unroll
  for (int i = 0; i < N; ++i) raw.v[i] = from_float<T>(src[i]);
  return raw;
}

template <typename T, int N>
__device__ __forceinline__ void store_raw(T* __restrict__ dst, const Vec<T, N>& raw) {
  *reinterpret_cast<Vec<T, N>*>(dst) = raw;
}

template <typename T, int N>
__device__ __forceinline__ void load_vec(const T* __restrict__ src, float (&dst)[N]) {
  unpack(load_raw<T, N>(src), dst);
}

template <typename T, int N>
__device__ __forceinline__ void store_vec(T* __restrict__ dst, const float (&src)[N]) {
  store_raw(dst, pack<T, N>(src));
}

template <typename T>
constexpr int vec_width() {
  return 16 / static_cast<int>(sizeof(T));
}

inline bool aligned(const void* p, int64_t bytes) {
  return p == nullptr || (reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(bytes)) == 0;
}

// Asks L2 for the line holding `p` without waiting for it (no register holds the data).
__device__ __forceinline__ void prefetch_l2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}

// ---- asynchronous global -> shared copies (sm_80+) -----------------------------------------
// cp.async moves 16 bytes to shared memory without holding a register while the load is in
// flight, so a block can keep several rows of loads outstanding. Each thread commits one group
// per stage (an empty group when it has nothing to copy) and waits for all but the newest N.
// Before sm_80 the copy is synchronous, which is correct but keeps no loads in flight.

__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const auto dst = static_cast<unsigned int>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(gmem_src) : "memory");
#else
  *static_cast<uint4*>(smem_dst) = *static_cast<const uint4*>(gmem_src);
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}

// Waits until at most `Pending` of this thread's committed groups are still in flight; the
// copies of the older groups are then visible to this thread.
template <int Pending>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;" ::"n"(Pending) : "memory");
#endif
}

// ---- reductions ----------------------------------------------------------------------------

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Block-wide reductions returning the result to every thread. `scratch` holds 32 floats;
// blockDim.x must be a multiple of 32.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int nwarps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be being read by the previous reduction
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nwarps ? scratch[lane] : 0.f;
  return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int nwarps = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nwarps ? scratch[lane] : -INFINITY;
  return warp_max(v);
}

// ---- launch helpers ------------------------------------------------------------------------

// Threads per block for `units` work items per row: a multiple of 32 in [32, max_threads].
inline int row_block_size(int64_t units, int max_threads) {
  int64_t t = ((units + 31) / 32) * 32;
  if (t < 32) t = 32;
  if (t > max_threads) t = max_threads;
  return static_cast<int>(t);
}

// Launch-time queries answered once per device (and kernel configuration), then from a cache:
// they are driver calls, and the host issues an op's kernels while the GPU runs the previous
// ones, so every microsecond the host spends per launch can become GPU idle time.
template <typename Key, typename Query>
int cached_query(const Key& key, Query&& query) {
  static std::mutex mu;  // one cache per instantiation: each call site's lambda is its own type
  static std::map<Key, int> cache;
  const std::lock_guard<std::mutex> lock(mu);
  const auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  return cache.emplace(key, query()).first->second;
}

inline int current_device() {
  int dev = 0;
  cudaGetDevice(&dev);
  return dev;
}

inline int device_attribute(cudaDeviceAttr attr) {
  const int dev = current_device();
  return cached_query(std::make_pair(dev, static_cast<int>(attr)), [&] {
    int value = 0;
    cudaDeviceGetAttribute(&value, attr, dev);
    return value;
  });
}

// Resident blocks per SM of `kernel` at this launch configuration on the current device.
inline int blocks_per_sm(const void* kernel, int threads, size_t smem) {
  return cached_query(std::make_tuple(current_device(), kernel, threads, smem), [&] {
    int per_sm = 0;
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem);
    return per_sm;
  });
}

// Lets `kernel` launch with `bytes` of dynamic shared memory on the current device (past 48 KB
// a kernel must opt in). The opt-in is a driver call, so it runs only when a launch needs more
// than the kernel was last allowed; it only ever raises the limit, which a smaller launch then
// also fits under. A refused size shows as the launch's error.
inline cudaError_t allow_dynamic_smem(const void* kernel, size_t bytes) {
  static std::mutex mu;
  static std::map<std::pair<int, const void*>, size_t> allowed;
  const std::lock_guard<std::mutex> lock(mu);
  size_t& current = allowed[std::make_pair(current_device(), kernel)];
  if (bytes <= current) return cudaSuccess;
  const cudaError_t err = cudaFuncSetAttribute(
      kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (err == cudaSuccess) current = bytes;
  return err;
}

// Grid for a grid-stride elementwise kernel over `n` items.
inline unsigned int elementwise_blocks(int64_t n, int threads) {
  const int64_t cap = static_cast<int64_t>(device_attribute(cudaDevAttrMultiProcessorCount)) * 32;
  int64_t blocks = (n + threads - 1) / threads;
  if (blocks > cap) blocks = cap;
  if (blocks < 1) blocks = 1;
  return static_cast<unsigned int>(blocks);
}

}  // namespace megastack
