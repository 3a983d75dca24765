"""research: a JAX/Flax library for language-model ablations. See README.md."""
