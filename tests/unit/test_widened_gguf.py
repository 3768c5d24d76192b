"""The widened F16 target (tests/fixtures_gguf.py's widened_f16_gguf, benchmarks/padded_target.py): zero MLP
units leave a layer's function unchanged. Checked on small random matrices in the GGUF's numpy layout
(gate and up: units x hidden, down: hidden x units), with llama.cpp's SwiGLU: down(silu(gate x) * up x)."""
import numpy as np
import pytest

from tests.fixtures_gguf import _widened, _widened_shape


def swiglu(gate, up, down, x):
    g = gate.astype(np.float32) @ x
    return down.astype(np.float32) @ ((g / (1 + np.exp(-g))) * (up.astype(np.float32) @ x))


def test_zero_units_leave_the_mlp_s_output_unchanged():
    rng = np.random.default_rng(0)
    hidden, units, wider = 16, 24, 96
    gate, up = (rng.standard_normal((units, hidden)).astype(np.float16) for _ in range(2))
    down = rng.standard_normal((hidden, units)).astype(np.float16)
    wide = {name: _widened(f"blk.0.ffn_{name}.weight", w, wider) for name, w in
            (("gate", gate), ("up", up), ("down", down))}
    assert wide["gate"].shape == wide["up"].shape == (wider, hidden) and wide["down"].shape == (hidden, wider)
    assert not wide["gate"][units:].any() and not wide["down"][:, units:].any()
    x = rng.standard_normal(hidden).astype(np.float32)
    np.testing.assert_allclose(swiglu(wide["gate"], wide["up"], wide["down"], x), swiglu(gate, up, down, x),
                               rtol=1e-5, atol=1e-5)


def test_only_the_mlp_is_widened_and_never_narrowed():
    assert _widened_shape("blk.0.attn_q.weight", (576, 576), 18432) == (576, 576)
    assert _widened_shape("token_embd.weight", (49152, 576), 18432) == (49152, 576)
    assert _widened_shape("blk.3.ffn_down.weight", (576, 1536), None) == (576, 1536)
    with pytest.raises(ValueError, match="cannot narrow"):
        _widened("blk.0.ffn_up.weight", np.zeros((1536, 576), np.float16), 1024)
