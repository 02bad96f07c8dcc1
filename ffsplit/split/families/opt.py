"""OPT."""

from ffsplit.split.ffn_adapter import FFNAdapter, register


@register
class OPTAdapter(FFNAdapter):
    """``fc1 -> activation_fn (ReLU) -> fc2`` directly on the decoder layer."""

    family = "opt"
    model_types = ("opt",)
    layers = "decoder.layers"
    fc_in = "fc1"
    act = "activation_fn"
    fc_out = "fc2"
    replace = "fc1"
    identities = ("activation_fn", "fc2")
    tasks = ("feature-extraction", "causal-lm", "causal-lm-with-past")
