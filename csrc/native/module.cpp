// hspi_kernels._native: the compiled core behind hspi_kernels.fingerprint.features and hspi_kernels.numerics.
// Each part registers its own functions; nothing here touches a GPU.
#include <pybind11/pybind11.h>

namespace hspi {
void register_features(pybind11::module_& m);   // csrc/features/extractor.cpp
void register_evaluator(pybind11::module_& m);  // csrc/numerics/evaluator.cpp
}  // namespace hspi

PYBIND11_MODULE(_native, m) {
  m.doc() = "hspi_kernels native core: feature extractor and exact plan evaluator";
#ifdef HSPI_HAVE_OPENMP
  m.attr("openmp") = true;
#else
  m.attr("openmp") = false;
#endif
  hspi::register_features(m);
  hspi::register_evaluator(m);
}
