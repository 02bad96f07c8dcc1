"""Phi-3: a gated MLP whose gate and up projections are fused in one ``gate_up_proj``."""

from ffsplit.split.ffn_adapter import FFNAdapter, register


@register
class Phi3Adapter(FFNAdapter):
    """``down_proj(up * act(gate))`` with ``gate, up = gate_up_proj(x).chunk(2)``."""

    family = "phi3"
    model_types = ("phi3",)
    layers = "layers"
    fc_gate_up = "mlp.gate_up_proj"
    act = "mlp.activation_fn"
    fc_out = "mlp.down_proj"
    replace = "mlp"
    tasks = ("feature-extraction", "causal-lm", "causal-lm-with-past")
