"""The numerics core: exact formats and rounding (`formats`, `rounding`), tensor-core block
models with per-architecture presets (`tensor_core`), accumulation plans (`plans`) and the one
bit-exact evaluator (`evaluate`, numpy path and C++ path). `exact` is a Fraction-based slow
reference used only by tests."""
