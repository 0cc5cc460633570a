// Exact plan evaluator (placeholder registration; filled by the numerics work).
#include <pybind11/pybind11.h>
namespace hspi {
void register_evaluator(pybind11::module_&) {}
}  // namespace hspi
