// CUDA segment_sum / segment_gather over target-sorted edges (CSR rowptr).
//
// Thread layout: a "row team" of TPR threads (one warp, or one 256-thread block
// for long rows) handles one CSR row. Inside a team, G threads span the feature
// dimension with VEC-wide (16-byte) vector loads, and the TPR / G "slots"
// split the row's edges round-robin (slot s takes edges start+s, start+s+S,
// ...). Each slot accumulates in registers (bf16 in fp32), then the slots are
// combined with a fixed xor-butterfly (and, for block teams, a fixed-order
// shared-memory pass). No atomics and a fixed summation order: the result is
// bitwise reproducible.
//
// Traffic per call: E*D reads + N*D writes (+ rowptr), i.e. essentially a copy.
#include "../aggregate.h"
#include "common.cuh"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace fastik {
namespace {

using namespace cuda_detail;

constexpr int kThreads = 256;

// This thread's place in its row team (TPR = tpr threads, G = 2^g_log2 columns).
struct RowTeam {
  int64_t row;  // the CSR row of the team (>= N for the tail teams of the last block)
  int lane;     // lane in the team, 0 .. tpr-1
  int G;        // threads across the feature dimension
  int S;        // edge slots, tpr / G
  int col;      // lane % G: this thread's VEC-wide column within each G-column chunk
  int slot;     // lane / G: this thread takes edges start+slot, start+slot+S, ...
};

__device__ __forceinline__ RowTeam row_team(int g_log2, int tpr) {
  const int rows_per_block = blockDim.x / tpr;
  RowTeam t;
  t.lane = threadIdx.x % tpr;
  t.row = static_cast<int64_t>(blockIdx.x) * rows_per_block + threadIdx.x / tpr;
  t.G = 1 << g_log2;
  t.S = tpr >> g_log2;
  t.col = t.lane & (t.G - 1);
  t.slot = t.lane >> g_log2;
  return t;
}

template <typename scalar_t, typename index_t, int VEC>
__global__ void __launch_bounds__(kThreads)
    segment_sum_kernel(const scalar_t* __restrict__ src, const index_t* __restrict__ rowptr,
                       scalar_t* __restrict__ out, int64_t N, int64_t DV, int g_log2,
                       int tpr) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ __align__(16) unsigned char smem_raw[];

  const RowTeam t = row_team(g_log2, tpr);
  // A whole team leaves together (teams are warps or the whole block).
  if (t.row >= N) return;

  const int G = t.G;
  const int S = t.S;
  const int64_t D = DV * VEC;
  const int64_t start = static_cast<int64_t>(rowptr[t.row]);
  const int64_t end = static_cast<int64_t>(rowptr[t.row + 1]);
  const int warp_span = tpr < 32 ? tpr : 32;

  for (int64_t cb = 0; cb < DV; cb += G) {
    const int64_t c = cb + t.col;
    acc_t acc[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) acc[j] = acc_t(0);

    if (c < DV) {
      const scalar_t* base = src + c * VEC;
      int64_t e = start + t.slot;
      // 4 independent loads in flight per thread, summed in edge order.
      for (; e + 3 * S < end; e += 4 * S) {
        const auto v0 = load_vec<scalar_t, VEC>(base + e * D);
        const auto v1 = load_vec<scalar_t, VEC>(base + (e + S) * D);
        const auto v2 = load_vec<scalar_t, VEC>(base + (e + 2 * S) * D);
        const auto v3 = load_vec<scalar_t, VEC>(base + (e + 3 * S) * D);
        add_vec(acc, v0);
        add_vec(acc, v1);
        add_vec(acc, v2);
        add_vec(acc, v3);
      }
      for (; e < end; e += S) add_vec(acc, load_vec<scalar_t, VEC>(base + e * D));
    }

    // Combine the slots of one warp (fixed butterfly; inactive lanes add zeros).
    for (int off = G; off < warp_span; off <<= 1) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) acc[j] += __shfl_xor_sync(0xffffffffu, acc[j], off);
    }

    if (tpr > 32) {
      // Block team: combine the warps' partial sums in warp order.
      acc_t* sm = reinterpret_cast<acc_t*>(smem_raw);
      const int warp = t.lane >> 5;
      const int lane = t.lane & 31;
      const int n_warps = tpr >> 5;
      if (lane < G) {
#pragma unroll
        for (int j = 0; j < VEC; ++j) sm[(warp * G + lane) * VEC + j] = acc[j];
      }
      __syncthreads();
      if (warp == 0 && lane < G) {
#pragma unroll
        for (int j = 0; j < VEC; ++j) acc[j] = sm[lane * VEC + j];
        for (int w = 1; w < n_warps; ++w) {
#pragma unroll
          for (int j = 0; j < VEC; ++j) acc[j] += sm[(w * G + lane) * VEC + j];
        }
      }
      __syncthreads();
    }

    if (t.slot == 0 && c < DV) {
      Vec<scalar_t, VEC> w;
#pragma unroll
      for (int j = 0; j < VEC; ++j) w.v[j] = static_cast<scalar_t>(acc[j]);
      store_vec<scalar_t, VEC>(out + t.row * D + c * VEC, w);
    }
  }
}

template <typename scalar_t, typename index_t, int VEC>
__global__ void __launch_bounds__(kThreads)
    segment_gather_kernel(const scalar_t* __restrict__ src, const index_t* __restrict__ rowptr,
                          scalar_t* __restrict__ out, int64_t N, int64_t DV, int g_log2,
                          int tpr) {
  const RowTeam t = row_team(g_log2, tpr);
  if (t.row >= N) return;

  const int64_t D = DV * VEC;
  const int64_t start = static_cast<int64_t>(rowptr[t.row]);
  const int64_t end = static_cast<int64_t>(rowptr[t.row + 1]);

  for (int64_t c = t.col; c < DV; c += t.G) {
    const auto v = load_vec<scalar_t, VEC>(src + t.row * D + c * VEC);
    for (int64_t e = start + t.slot; e < end; e += t.S) {
      store_vec<scalar_t, VEC>(out + e * D + c * VEC, v);
    }
  }
}

struct Launch {
  int vec;
  int64_t dv;
  int g_log2;
  int tpr;
  int64_t blocks;
};

// Team shape for N rows, E edges and D features of `elem_size` bytes.
template <typename scalar_t>
Launch plan(int64_t N, int64_t E, int64_t D, const void* a, const void* b) {
  Launch l;
  l.vec = vec_width<scalar_t>(D, a, b);
  l.dv = D / l.vec;
  const int G = next_pow2_capped(l.dv, 32);
  l.g_log2 = ilog2(G);
  // A block team pays off when each of its kThreads / G slots gets a few edges.
  const int64_t avg_deg = E / (N > 0 ? N : 1);
  l.tpr = avg_deg >= 4 * (kThreads / G) ? kThreads : 32;
  const int64_t rows_per_block = kThreads / l.tpr;
  l.blocks = (N + rows_per_block - 1) / rows_per_block;
  return l;
}

// Both CUDA segment ops check a non-empty rowptr first (segment_gather then
// checks its exact length; on CPU it only does the latter).
void check_segment_inputs(const at::Tensor& src, const at::Tensor& rowptr, const char* op) {
  check_inputs(src, rowptr, op, "rowptr");
  check_is_cuda(src, op);
  check_rowptr_nonempty(rowptr, op);
}

}  // namespace

at::Tensor segment_sum_cuda(const at::Tensor& src_in, const at::Tensor& rowptr_in) {
  constexpr const char* op = "fastik::segment_sum_raw";
  check_segment_inputs(src_in, rowptr_in, op);
  const c10::cuda::CUDAGuard guard(src_in.device());
  const at::Tensor src = src_in.contiguous();
  const at::Tensor rowptr = rowptr_in.contiguous();
  const int64_t E = src.size(0);
  const int64_t D = src.size(1);
  const int64_t N = rowptr.numel() - 1;

  at::Tensor out = at::empty({N, D}, src.options());
  if (N == 0 || D == 0) return out;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, src.scalar_type(), "segment_sum_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    AT_DISPATCH_INDEX_TYPES(rowptr.scalar_type(), "segment_sum_cuda_index", [&] {
      const Launch l = plan<scalar_t>(N, E, D, src.const_data_ptr(), out.const_data_ptr());
      dispatch_vec<scalar_t>(l.vec, [&](auto vec_c) {
        constexpr int VEC = decltype(vec_c)::value;
        const size_t smem =
            l.tpr > 32 ? static_cast<size_t>(l.tpr / 32) * (1 << l.g_log2) * VEC * sizeof(acc_t)
                       : 0;
        segment_sum_kernel<scalar_t, index_t, VEC>
            <<<static_cast<unsigned int>(l.blocks), kThreads, smem, stream>>>(
                src.const_data_ptr<scalar_t>(), rowptr.const_data_ptr<index_t>(),
                out.mutable_data_ptr<scalar_t>(), N, l.dv, l.g_log2, l.tpr);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });
  return out;
}

at::Tensor segment_gather_cuda(const at::Tensor& src_in, const at::Tensor& rowptr_in,
                               int64_t num_edges) {
  constexpr const char* op = "fastik::segment_gather_raw";
  check_segment_inputs(src_in, rowptr_in, op);
  check_gather_sizes(src_in, rowptr_in, num_edges, op);
  const c10::cuda::CUDAGuard guard(src_in.device());
  const at::Tensor src = src_in.contiguous();
  const at::Tensor rowptr = rowptr_in.contiguous();
  const int64_t N = src.size(0);
  const int64_t D = src.size(1);
  const int64_t E = num_edges;

  at::Tensor out = at::empty({E, D}, src.options());
  if (N == 0 || D == 0 || E == 0) return out;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, src.scalar_type(), "segment_gather_cuda", [&] {
    AT_DISPATCH_INDEX_TYPES(rowptr.scalar_type(), "segment_gather_cuda_index", [&] {
      const Launch l = plan<scalar_t>(N, E, D, src.const_data_ptr(), out.const_data_ptr());
      dispatch_vec<scalar_t>(l.vec, [&](auto vec_c) {
        constexpr int VEC = decltype(vec_c)::value;
        segment_gather_kernel<scalar_t, index_t, VEC>
            <<<static_cast<unsigned int>(l.blocks), kThreads, 0, stream>>>(
                src.const_data_ptr<scalar_t>(), rowptr.const_data_ptr<index_t>(),
                out.mutable_data_ptr<scalar_t>(), N, l.dv, l.g_log2, l.tpr);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });
  return out;
}

}  // namespace fastik
