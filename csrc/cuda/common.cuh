// Small helpers shared by the CUDA aggregation kernels.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <cstdint>

namespace fastik {
namespace cuda_detail {

// VEC consecutive scalars loaded / stored as one (up to) 16-byte transaction.
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Vec {
  T v[VEC];
};

template <typename T, int VEC>
__device__ __forceinline__ Vec<T, VEC> load_vec(const T* __restrict__ p) {
  return *reinterpret_cast<const Vec<T, VEC>*>(p);
}

template <typename T, int VEC>
__device__ __forceinline__ void store_vec(T* __restrict__ p, const Vec<T, VEC>& v) {
  *reinterpret_cast<Vec<T, VEC>*>(p) = v;
}

template <typename acc_t, typename T, int VEC>
__device__ __forceinline__ void add_vec(acc_t (&acc)[VEC], const Vec<T, VEC>& v) {
#pragma unroll
  for (int j = 0; j < VEC; ++j) acc[j] += static_cast<acc_t>(v.v[j]);
}

template <typename scalar_t>
constexpr int max_vec() {
  return 16 / static_cast<int>(sizeof(scalar_t));
}

inline bool aligned16(const void* p) {
  return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0;
}

// Vector width for rows of D scalars: the widest vector (16 bytes) when D is a
// multiple of it and every base pointer is 16-byte aligned; otherwise 1 (scalar accesses).
template <typename scalar_t, typename... Ptrs>
int vec_width(int64_t D, const Ptrs*... base_ptrs) {
  return (D % max_vec<scalar_t>() == 0 && (aligned16(base_ptrs) && ...)) ? max_vec<scalar_t>() : 1;
}

inline int next_pow2_capped(int64_t x, int cap) {
  int p = 1;
  while (p < x && p < cap) p <<= 1;
  return p;
}

inline int ilog2(int x) {
  int l = 0;
  while ((1 << l) < x) ++l;
  return l;
}

// Calls f(std::integral_constant<int, VEC>) with VEC in {1, max_vec<scalar_t>()}.
template <typename scalar_t, typename F>
void dispatch_vec(int vec, F&& f) {
  constexpr int kMax = max_vec<scalar_t>();
  if (vec == kMax) {
    f(std::integral_constant<int, kMax>{});
  } else {
    TORCH_INTERNAL_ASSERT(vec == 1, "fastik: unexpected vector width ", vec);
    f(std::integral_constant<int, 1>{});
  }
}

// The CUDA entry points' device check (after check_inputs, before the size checks).
inline void check_is_cuda(const at::Tensor& src, const char* op) {
  TORCH_CHECK_VALUE(src.is_cuda(), op, ": expected CUDA tensors, got ", src.device());
}

}  // namespace cuda_detail
}  // namespace fastik
