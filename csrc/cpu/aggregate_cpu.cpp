// CPU kernels for fastik._C: segment_sum, scatter_sum, segment_gather.
//
// Parallelised with at::parallel_for (OpenMP backend in the torch wheels).
// Every output row is accumulated by exactly one thread, in edge order, so all
// results are bitwise identical across runs *and* across thread counts.
#include "../aggregate.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <vector>

namespace fastik {
namespace {

// Aim for about this many scalar additions per parallel_for chunk.
constexpr int64_t kWorkPerChunk = 1 << 15;

template <typename index_t>
void check_rowptr_values_cpu(const index_t* rp, int64_t n_rows, int64_t num_edges,
                             const char* op) {
  TORCH_CHECK_VALUE(static_cast<int64_t>(rp[0]) == 0, op, ": rowptr[0] must be 0, got ",
                    static_cast<int64_t>(rp[0]));
  TORCH_CHECK_VALUE(static_cast<int64_t>(rp[n_rows]) == num_edges, op,
                    ": rowptr[-1] must equal the number of edges E=", num_edges, ", got ",
                    static_cast<int64_t>(rp[n_rows]));
  for (int64_t i = 0; i < n_rows; ++i) {
    TORCH_CHECK_VALUE(rp[i + 1] >= rp[i], op,
                      ": rowptr must be monotone non-decreasing, but rowptr[", i + 1, "]=",
                      static_cast<int64_t>(rp[i + 1]), " < rowptr[", i, "]=",
                      static_cast<int64_t>(rp[i]));
  }
}

// parallel_for grain (in rows) for N CSR rows that share E edges of D features.
int64_t row_grain(int64_t N, int64_t E, int64_t D) {
  const int64_t work_per_row = (E / std::max<int64_t>(N, 1) + 1) * D;
  return std::max<int64_t>(1, kWorkPerChunk / std::max<int64_t>(1, work_per_row));
}

}  // namespace

at::Tensor segment_sum_cpu(const at::Tensor& src_in, const at::Tensor& rowptr_in) {
  constexpr const char* op = "fastik::segment_sum_raw";
  check_inputs(src_in, rowptr_in, op, "rowptr");
  check_rowptr_nonempty(rowptr_in, op);
  const at::Tensor src = src_in.contiguous();
  const at::Tensor rowptr = rowptr_in.contiguous();
  const int64_t E = src.size(0);
  const int64_t D = src.size(1);
  const int64_t N = rowptr.numel() - 1;

  at::Tensor out = at::empty({N, D}, src.options());
  AT_DISPATCH_INDEX_TYPES(rowptr.scalar_type(), "segment_sum_cpu_index", [&] {
    const index_t* rp = rowptr.const_data_ptr<index_t>();
    check_rowptr_values_cpu(rp, N, E, op);
    if (N == 0 || D == 0) return;
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, src.scalar_type(), "segment_sum_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* s = src.const_data_ptr<scalar_t>();
      scalar_t* o = out.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, N, row_grain(N, E, D), [&](int64_t begin, int64_t end) {
        std::vector<acc_t> acc(D);
        for (int64_t i = begin; i < end; ++i) {
          std::fill(acc.begin(), acc.end(), acc_t(0));
          const int64_t k0 = static_cast<int64_t>(rp[i]);
          const int64_t k1 = static_cast<int64_t>(rp[i + 1]);
          for (int64_t k = k0; k < k1; ++k) {
            const scalar_t* row = s + k * D;
            for (int64_t d = 0; d < D; ++d) acc[d] += static_cast<acc_t>(row[d]);
          }
          scalar_t* orow = o + i * D;
          for (int64_t d = 0; d < D; ++d) orow[d] = static_cast<scalar_t>(acc[d]);
        }
      });
    });
  });
  return out;
}

at::Tensor scatter_sum_cpu(const at::Tensor& src_in, const at::Tensor& index_in,
                           int64_t dim_size) {
  constexpr const char* op = "fastik::scatter_sum_raw";
  check_inputs(src_in, index_in, op, "index");
  check_scatter_sizes(src_in, index_in, dim_size, op);
  const at::Tensor src = src_in.contiguous();
  const at::Tensor index = index_in.contiguous();
  const int64_t E = src.size(0);
  const int64_t D = src.size(1);
  const int64_t N = dim_size;

  at::Tensor acc_out = scatter_accumulator(src, N);  // float32 for bfloat16 src

  AT_DISPATCH_INDEX_TYPES(index.scalar_type(), "scatter_sum_cpu_index", [&] {
    const index_t* idx = index.const_data_ptr<index_t>();
    for (int64_t k = 0; k < E; ++k) {
      const int64_t t = static_cast<int64_t>(idx[k]);
      TORCH_CHECK_VALUE(t >= 0 && t < N, op, ": index[", k, "]=", t,
                        " is out of range for dim_size=", N);
    }
    if (N == 0 || D == 0 || E == 0) return;
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, src.scalar_type(), "scatter_sum_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* s = src.const_data_ptr<scalar_t>();
      acc_t* o = acc_out.mutable_data_ptr<acc_t>();
      // Each thread owns a contiguous range of target rows and scans all edges,
      // accumulating only the ones that land in its range: race-free, no
      // atomics, and every row sums its edges in edge order (deterministic,
      // independent of the thread count). Costs one index scan per thread.
      const int64_t n_threads = std::max<int64_t>(1, at::get_num_threads());
      const int64_t total_work = E * D;
      const int64_t n_chunks =
          std::max<int64_t>(1, std::min<int64_t>(n_threads, total_work / kWorkPerChunk));
      const int64_t grain = (N + n_chunks - 1) / n_chunks;
      at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
        for (int64_t k = 0; k < E; ++k) {
          const int64_t t = static_cast<int64_t>(idx[k]);
          if (t < begin || t >= end) continue;
          const scalar_t* row = s + k * D;
          acc_t* orow = o + t * D;
          for (int64_t d = 0; d < D; ++d) orow[d] += static_cast<acc_t>(row[d]);
        }
      });
    });
  });
  return scatter_result(acc_out, src);
}

at::Tensor segment_gather_cpu(const at::Tensor& src_in, const at::Tensor& rowptr_in,
                              int64_t num_edges) {
  constexpr const char* op = "fastik::segment_gather_raw";
  check_inputs(src_in, rowptr_in, op, "rowptr");
  check_gather_sizes(src_in, rowptr_in, num_edges, op);
  const at::Tensor src = src_in.contiguous();
  const at::Tensor rowptr = rowptr_in.contiguous();
  const int64_t N = src.size(0);
  const int64_t D = src.size(1);
  const int64_t E = num_edges;

  at::Tensor out = at::empty({E, D}, src.options());
  AT_DISPATCH_INDEX_TYPES(rowptr.scalar_type(), "segment_gather_cpu_index", [&] {
    const index_t* rp = rowptr.const_data_ptr<index_t>();
    check_rowptr_values_cpu(rp, N, E, op);
    if (N == 0 || D == 0 || E == 0) return;
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, src.scalar_type(), "segment_gather_cpu", [&] {
      const scalar_t* s = src.const_data_ptr<scalar_t>();
      scalar_t* o = out.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, N, row_grain(N, E, D), [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          const scalar_t* row = s + i * D;
          for (int64_t k = rp[i]; k < static_cast<int64_t>(rp[i + 1]); ++k) {
            std::copy(row, row + D, o + k * D);
          }
        }
      });
    });
  });
  return out;
}

}  // namespace fastik
