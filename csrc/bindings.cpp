// Bindings for fastik._C.
//
// Registers the raw kernels as dispatcher ops in the `fastik` namespace
// (TORCH_LIBRARY_FRAGMENT, so Python-level torch.library.custom_op ops in the
// same namespace, e.g. fastik::segment_sum or fastik::implicit_message_passing,
// can coexist):
//
//   torch.ops.fastik.segment_sum_raw(Tensor src, Tensor rowptr) -> Tensor
//   torch.ops.fastik.scatter_sum_raw(Tensor src, Tensor index, int dim_size) -> Tensor
//   torch.ops.fastik.segment_gather_raw(Tensor src, Tensor rowptr, int num_edges) -> Tensor
//
// The raw ops have no autograd or fake implementations: use the validated,
// differentiable wrappers in fastik.ops.aggregate. The Python module itself is
// a plain CPython extension (no pybind11, to keep build times low) exposing
// has_cuda() and cuda_version().
#include <Python.h>

#include <torch/library.h>

#include "aggregate.h"

TORCH_LIBRARY_FRAGMENT(fastik, m) {
  m.def("segment_sum_raw(Tensor src, Tensor rowptr) -> Tensor");
  m.def("scatter_sum_raw(Tensor src, Tensor index, int dim_size) -> Tensor");
  m.def("segment_gather_raw(Tensor src, Tensor rowptr, int num_edges) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastik, CPU, m) {
  m.impl("segment_sum_raw", &fastik::segment_sum_cpu);
  m.impl("scatter_sum_raw", &fastik::scatter_sum_cpu);
  m.impl("segment_gather_raw", &fastik::segment_gather_cpu);
}

#ifdef FASTIK_WITH_CUDA
TORCH_LIBRARY_IMPL(fastik, CUDA, m) {
  m.impl("segment_sum_raw", &fastik::segment_sum_cuda);
  m.impl("scatter_sum_raw", &fastik::scatter_sum_cuda);
  m.impl("segment_gather_raw", &fastik::segment_gather_cuda);
}
#endif

namespace {

PyObject* fastik_has_cuda(PyObject* /*self*/, PyObject* /*args*/) {
#ifdef FASTIK_WITH_CUDA
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

PyObject* fastik_cuda_version(PyObject* /*self*/, PyObject* /*args*/) {
#if defined(FASTIK_WITH_CUDA) && defined(FASTIK_CUDA_MAJOR) && defined(FASTIK_CUDA_MINOR)
  return PyUnicode_FromFormat("%d.%d", FASTIK_CUDA_MAJOR, FASTIK_CUDA_MINOR);
#else
  Py_RETURN_NONE;
#endif
}

PyMethodDef fastik_methods[] = {
    {"has_cuda", fastik_has_cuda, METH_NOARGS,
     "True if the extension was compiled with its CUDA kernels."},
    {"cuda_version", fastik_cuda_version, METH_NOARGS,
     "CUDA version (torch.version.cuda at build time, e.g. '13.0') of the CUDA kernels, or None."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef fastik_module = {
    PyModuleDef_HEAD_INIT,
    "_C",
    "fastik._C: C++/CUDA aggregation kernels; ops live in torch.ops.fastik.*_raw.",
    -1,
    fastik_methods,
    nullptr,
    nullptr,
    nullptr,
    nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) {
  return PyModule_Create(&fastik_module);
}
