"""The paper's arithmetic table comes from the library's parameter count."""

from experiments.bench import arithmetic
from mach_jax.model import num_params_formula


def test_paper_setting_output_layers():
  text = arithmetic.table(K=49_460_000, B=10_000, R=32, hiddens=[2000])
  # 49.46M x 2000 weights + 49.46M biases; 32 x (2000 x 10,000 + 10,000).
  assert num_params_formula(2000, (), 49_460_000) == 49_460_000 * 2001
  assert "98.97B (368.7 GiB)" in text and "640.3M (2.4 GiB)" in text and "| 155x" in text


def test_whole_models_with_input_layers():
  text = arithmetic.table(K=1_000_000, B=4096, R=4, hiddens=[64], D=1 << 18)
  full = (1 << 18) * 64 + 64 + 64 * 1_000_000 + 1_000_000
  mach = 4 * ((1 << 18) * 64 + 64 + 64 * 4096 + 4096)
  assert f"{full / mach:.2f}x" in text
