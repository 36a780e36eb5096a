// The Python module fastgan._C. Its only job is to be importable: importing it loads
// this shared library, whose static initialisers register the kernels as ops under
// torch.ops.fastgan_C (see csrc/cpu/*.cpp for the schemas, csrc/cuda/*.cu for CUDA
// implementations). Python then wraps them as fastgan:: custom ops with autograd.
#include <Python.h>
#include <torch/library.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace fastgan {
bool has_cuda() {
#ifdef FASTGAN_WITH_CUDA
  return true;
#else
  return false;
#endif
}
}  // namespace fastgan

TORCH_LIBRARY_FRAGMENT(fastgan_C, m) {
  // Whether this build compiled the CUDA kernels (the cuda backend asks).
  m.def("has_cuda() -> bool", &fastgan::has_cuda);
}
