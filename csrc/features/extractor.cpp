// Native feature extractor v1 (placeholder registration; filled by the features work).
#include <pybind11/pybind11.h>
namespace hspi {
void register_features(pybind11::module_&) {}
}  // namespace hspi
