"""ModernBERT: a GeGLU MLP with one fused input projection ``Wi``."""

from ffsplit.split.ffn_adapter import FFNAdapter, register


@register
class ModernBertAdapter(FFNAdapter):
    """``Wo(act(input) * gate)`` with ``input, gate = Wi(x).chunk(2)`` (dropout is off in eval)."""

    family = "modernbert"
    model_types = ("modernbert",)
    layers = "layers"
    fc_gate_up = "mlp.Wi"
    act = "mlp.act"
    fc_out = "mlp.Wo"
    replace = "mlp"
    tasks = ("feature-extraction", "text-classification")
