// CUDA scatter_sum for unsorted edges: out[index[e]] += src[e] with atomics.
//
// One thread per (edge, 16-byte feature chunk): a vector load of src, then
// VEC scalar atomicAdds (compiled to fire-and-forget RED instructions).
// bfloat16 inputs are accumulated in a float32 buffer and rounded once at the
// end. Not bitwise deterministic (atomic order); use segment_sum with a CSR
// when reproducibility matters. Out-of-range indices are skipped (the Python
// layer rejects them before launching).
#include "../aggregate.h"
#include "common.cuh"

#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

namespace fastik {
namespace {

using namespace cuda_detail;

constexpr int kThreads = 256;

template <typename scalar_t, typename acc_t, typename index_t, int VEC>
__global__ void __launch_bounds__(kThreads)
    scatter_sum_kernel(const scalar_t* __restrict__ src, const index_t* __restrict__ index,
                       acc_t* __restrict__ out, int64_t E, int64_t DV, int64_t N) {
  const int64_t total = E * DV;
  const int64_t D = DV * VEC;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const int64_t e = i / DV;
    const int64_t c = i - e * DV;
    const int64_t t = static_cast<int64_t>(index[e]);
    if (t < 0 || t >= N) continue;
    const auto v = load_vec<scalar_t, VEC>(src + e * D + c * VEC);
    acc_t* o = out + t * D + c * VEC;
#pragma unroll
    for (int j = 0; j < VEC; ++j) atomicAdd(o + j, static_cast<acc_t>(v.v[j]));
  }
}

int sm_count(int device) {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return sms > 0 ? sms : 1;
}

}  // namespace

at::Tensor scatter_sum_cuda(const at::Tensor& src_in, const at::Tensor& index_in,
                            int64_t dim_size) {
  constexpr const char* op = "fastik::scatter_sum_raw";
  check_inputs(src_in, index_in, op, "index");
  check_is_cuda(src_in, op);
  check_scatter_sizes(src_in, index_in, dim_size, op);
  const c10::cuda::CUDAGuard guard(src_in.device());
  const at::Tensor src = src_in.contiguous();
  const at::Tensor index = index_in.contiguous();
  const int64_t E = src.size(0);
  const int64_t D = src.size(1);
  const int64_t N = dim_size;

  at::Tensor acc_out = scatter_accumulator(src, N);  // float32 for bfloat16 src
  if (N == 0 || D == 0 || E == 0) return scatter_result(acc_out, src);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int max_blocks = sm_count(src.get_device()) * (2048 / kThreads) * 4;

  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, src.scalar_type(), "scatter_sum_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    AT_DISPATCH_INDEX_TYPES(index.scalar_type(), "scatter_sum_cuda_index", [&] {
      // Only src is read with vector loads (out gets scalar atomics).
      const int vec = vec_width<scalar_t>(D, src.const_data_ptr());
      dispatch_vec<scalar_t>(vec, [&](auto vec_c) {
        constexpr int VEC = decltype(vec_c)::value;
        const int64_t DV = D / VEC;
        const int64_t total = E * DV;
        const int64_t blocks =
            std::min<int64_t>((total + kThreads - 1) / kThreads, static_cast<int64_t>(max_blocks));
        scatter_sum_kernel<scalar_t, acc_t, index_t, VEC>
            <<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(
                src.const_data_ptr<scalar_t>(), index.const_data_ptr<index_t>(),
                acc_out.mutable_data_ptr<acc_t>(), E, DV, N);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });
  return scatter_result(acc_out, src);
}

}  // namespace fastik
