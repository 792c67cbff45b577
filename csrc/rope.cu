// Rotary position embedding in megatron-core's non-interleaved (rotate-half) convention on the
// [s, b, h, d] layout. With half = rot_dim / 2, i < half and position p = s index:
//   y[i]        = x[i] * cos[p, i]        - x[i + half] * sin[p, i]
//   y[i + half] = x[i + half] * cos[p, i + half] + x[i] * sin[p, i + half]
//   y[j] = x[j] for j >= rot_dim (partial rotary).
// The backward applies the transpose:
//   dx[i]        = dy[i] * cos[p, i] + dy[i + half] * sin[p, i + half]
//   dx[i + half] = dy[i + half] * cos[p, i + half] - dy[i] * sin[p, i]
// cos/sin come precomputed in fp32 from PyTorch: under --use_fast_math sinf/cosf of large
// angles (position * frequency reaches thousands of radians) would lose accuracy.

#include "common.cuh"

namespace megastack {
namespace {

template <typename T, int VEC, bool BACKWARD>
__global__ void rope_kernel(const T* __restrict__ t, T* __restrict__ out,
                            const float* __restrict__ cos, const float* __restrict__ sin,
                            int64_t s, int64_t b, int64_t h, int64_t d, int64_t rot_dim,
                            int64_t stride_s, int64_t stride_b, int64_t stride_h) {
  const int64_t half = rot_dim / 2;
  const int64_t pair_units = half / VEC;
  const int64_t units = pair_units + (d - rot_dim) / VEC;
  const int64_t n = s * b * h * units;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / units;
    const int64_t u = i - row * units;
    const int64_t hi = row % h;
    const int64_t bi = (row / h) % b;
    const int64_t si = row / (h * b);
    const T* src = t + si * stride_s + bi * stride_b + hi * stride_h;
    T* dst = out + row * d;
    if (u >= pair_units) {  // pass-through channel block
      const int64_t c = rot_dim + (u - pair_units) * VEC;
      float v[VEC];
      load_vec<T, VEC>(src + c, v);
      store_vec<T, VEC>(dst + c, v);
      continue;
    }
    const int64_t c = u * VEC;
    const float* cr = cos + si * rot_dim;
    const float* sr = sin + si * rot_dim;
    float x1[VEC], x2[VEC], c1[VEC], c2[VEC], s1[VEC], s2[VEC], y1[VEC], y2[VEC];
    load_vec<T, VEC>(src + c, x1);
    load_vec<T, VEC>(src + half + c, x2);
    load_vec<float, VEC>(cr + c, c1);
    load_vec<float, VEC>(cr + half + c, c2);
    load_vec<float, VEC>(sr + c, s1);
    load_vec<float, VEC>(sr + half + c, s2);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      if constexpr (BACKWARD) {
        y1[k] = x1[k] * c1[k] + x2[k] * s2[k];
        y2[k] = x2[k] * c2[k] - x1[k] * s1[k];
      } else {
        y1[k] = x1[k] * c1[k] - x2[k] * s1[k];
        y2[k] = x2[k] * c2[k] + x1[k] * s2[k];
      }
    }
    store_vec<T, VEC>(dst + c, y1);
    store_vec<T, VEC>(dst + half + c, y2);
  }
}

constexpr int kThreads = 256;

template <typename T, int VEC>
void launch(bool backward, const T* t, T* out, const float* cos, const float* sin, int64_t s,
            int64_t b, int64_t h, int64_t d, int64_t rot_dim, int64_t ss, int64_t sb, int64_t sh,
            cudaStream_t stream) {
  const int64_t units = rot_dim / 2 / VEC + (d - rot_dim) / VEC;
  const unsigned int blocks = elementwise_blocks(s * b * h * units, kThreads);
  if (backward) {
    rope_kernel<T, VEC, true><<<blocks, kThreads, 0, stream>>>(t, out, cos, sin, s, b, h, d,
                                                               rot_dim, ss, sb, sh);
  } else {
    rope_kernel<T, VEC, false><<<blocks, kThreads, 0, stream>>>(t, out, cos, sin, s, b, h, d,
                                                                rot_dim, ss, sb, sh);
  }
}

}  // namespace

cudaError_t rope(DType dtype, bool backward, const void* t, void* out, const float* cos,
                 const float* sin, int64_t s, int64_t b, int64_t h, int64_t d, int64_t rot_dim,
                 int64_t stride_s, int64_t stride_b, int64_t stride_h, cudaStream_t stream) {
  if (s * b * h * d == 0) return cudaSuccess;
  MS_DISPATCH(dtype, [&] {
    using T = scalar_t;
    constexpr int V = vec_width<T>();
    const bool vec = (rot_dim / 2) % V == 0 && (d - rot_dim) % V == 0 && stride_s % V == 0 &&
                     stride_b % V == 0 && stride_h % V == 0 && aligned(t, 16) &&
                     aligned(out, 16) && aligned(cos, V * sizeof(float)) &&
                     aligned(sin, V * sizeof(float));
    const auto* tp = static_cast<const T*>(t);
    auto* op = static_cast<T*>(out);
    if (vec) {
      launch<T, V>(backward, tp, op, cos, sin, s, b, h, d, rot_dim, stride_s, stride_b,
                   stride_h, stream);
    } else {
      launch<T, 1>(backward, tp, op, cos, sin, s, b, h, d, rot_dim, stride_s, stride_b,
                   stride_h, stream);
    }
  });
  return cudaGetLastError();
}

}  // namespace megastack
