// fastik._C: aggregation kernels (segment / scatter sums) shared declarations.
//
// All kernels take row-major contiguous `src` of shape (rows, D) in float32,
// float64 or bfloat16 (bfloat16 is accumulated in float32) and int32 / int64
// index tensors. The Python layer (fastik/ops/aggregate.py) validates shapes,
// dtypes, devices *and index values* before calling these raw ops; the C++
// entry points re-check everything that is cheap (shapes, dtypes, devices; on
// CPU also the index values). The CUDA entry points never synchronise, so they
// do not check index values: out-of-range scatter indices are skipped there,
// and a malformed rowptr is undefined behaviour (it is read, never written).
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <cstdint>

namespace fastik {

// Shape / dtype / device checks common to CPU and CUDA (cheap, never synchronise).
inline void check_src(const at::Tensor& src, const char* op, const char* name = "src") {
  const auto st = src.scalar_type();
  TORCH_CHECK_TYPE(st == at::kFloat || st == at::kDouble || st == at::kBFloat16, op, ": ", name,
                   " must be float32, float64 or bfloat16, got ", st);
  TORCH_CHECK_VALUE(src.dim() == 2, op, ": ", name, " must be 2-D (rows, D), got shape ",
                    src.sizes());
}

inline void check_index(const at::Tensor& index, const char* op, const char* name) {
  const auto st = index.scalar_type();
  TORCH_CHECK_TYPE(st == at::kInt || st == at::kLong, op, ": ", name,
                   " must be int32 or int64, got ", st);
  TORCH_CHECK_VALUE(index.dim() == 1, op, ": ", name, " must be 1-D, got shape ", index.sizes());
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* op,
                              const char* name_a, const char* name_b) {
  TORCH_CHECK_VALUE(a.device() == b.device(), op, ": ", name_a, " (", a.device(), ") and ",
                    name_b, " (", b.device(), ") must be on the same device");
}

// The checks every raw op starts with: src, then its index tensor (`rowptr` or
// `index`), then that both are on one device.
inline void check_inputs(const at::Tensor& src, const at::Tensor& index, const char* op,
                         const char* index_name) {
  check_src(src, op);
  check_index(index, op, index_name);
  check_same_device(src, index, op, "src", index_name);
}

// The size checks of each op (after check_inputs; CUDA also checks is_cuda in between).
inline void check_rowptr_nonempty(const at::Tensor& rowptr, const char* op) {
  TORCH_CHECK_VALUE(rowptr.numel() >= 1, op, ": rowptr must have N+1 >= 1 entries, got shape ",
                    rowptr.sizes());
}

inline void check_scatter_sizes(const at::Tensor& src, const at::Tensor& index, int64_t dim_size,
                                const char* op) {
  TORCH_CHECK_VALUE(index.numel() == src.size(0), op, ": index must have length E=", src.size(0),
                    " (src.shape[0]), got shape ", index.sizes());
  TORCH_CHECK_VALUE(dim_size >= 0, op, ": dim_size must be >= 0, got ", dim_size);
}

inline void check_gather_sizes(const at::Tensor& src, const at::Tensor& rowptr, int64_t num_edges,
                               const char* op) {
  TORCH_CHECK_VALUE(rowptr.numel() == src.size(0) + 1, op,
                    ": rowptr must have N+1 entries with N=src.shape[0]=", src.size(0),
                    ", got shape ", rowptr.sizes());
  TORCH_CHECK_VALUE(num_edges >= 0, op, ": num_edges must be >= 0, got ", num_edges);
}

// scatter_sum accumulates into a zeroed (N, D) buffer of src's op-math dtype
// (float32 for bfloat16 src, else src's dtype: the kernels' acc_t), then
// rounds it to src's dtype once at the end (a no-op unless bfloat16).
inline at::Tensor scatter_accumulator(const at::Tensor& src, int64_t N) {
  return at::zeros({N, src.size(1)}, src.options().dtype(at::toOpMathType(src.scalar_type())));
}

inline at::Tensor scatter_result(const at::Tensor& acc, const at::Tensor& src) {
  return acc.to(src.scalar_type());
}

// ---------------------------------------------------------------- CPU
// out[i] = sum_{k in [rowptr[i], rowptr[i+1])} src[k]     src (E, D), rowptr (N+1,) -> (N, D)
at::Tensor segment_sum_cpu(const at::Tensor& src, const at::Tensor& rowptr);
// out[index[k]] += src[k]                                  src (E, D), index (E,) -> (dim_size, D)
at::Tensor scatter_sum_cpu(const at::Tensor& src, const at::Tensor& index, int64_t dim_size);
// out[k] = src[i] for k in [rowptr[i], rowptr[i+1])        src (N, D), rowptr (N+1,) -> (num_edges, D)
at::Tensor segment_gather_cpu(const at::Tensor& src, const at::Tensor& rowptr, int64_t num_edges);

#ifdef FASTIK_WITH_CUDA
// ---------------------------------------------------------------- CUDA
at::Tensor segment_sum_cuda(const at::Tensor& src, const at::Tensor& rowptr);
at::Tensor scatter_sum_cuda(const at::Tensor& src, const at::Tensor& index, int64_t dim_size);
at::Tensor segment_gather_cuda(const at::Tensor& src, const at::Tensor& rowptr, int64_t num_edges);
#endif

}  // namespace fastik
