"""Decoders with a Llama-style gated MLP: Llama, Mistral, Qwen2, Qwen3, Gemma."""

from ffsplit.split.ffn_adapter import FFNAdapter, register


@register
class LlamaAdapter(FFNAdapter):
    """``down(act(gate(x)) * up(x))`` from separate ``gate_proj`` and ``up_proj``.

    Gemma's GeGLU is this layout with a tanh-GELU; Qwen3's q/k norms live in attention.
    """

    family = "llama"
    model_types = ("llama", "mistral", "qwen2", "qwen3", "gemma")
    layers = "layers"
    fc_in = "mlp.up_proj"
    fc_gate = "mlp.gate_proj"
    act = "mlp.act_fn"
    fc_out = "mlp.down_proj"
    replace = "mlp"
    tasks = ("feature-extraction", "causal-lm", "causal-lm-with-past")
