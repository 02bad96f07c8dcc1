"""GPT-2."""

from ffsplit.split.ffn_adapter import FFNAdapter, register


@register
class GPT2Adapter(FFNAdapter):
    """Conv1D projections (weights stored transposed): ``mlp.c_fc -> mlp.act -> mlp.c_proj``."""

    family = "gpt2"
    model_types = ("gpt2",)
    layers = "h"
    fc_in = "mlp.c_fc"
    act = "mlp.act"
    fc_out = "mlp.c_proj"
    replace = "mlp.c_fc"
    identities = ("mlp.act", "mlp.c_proj")
    tasks = ("feature-extraction", "causal-lm", "causal-lm-with-past")
