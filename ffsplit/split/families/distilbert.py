"""DistilBERT."""

from ffsplit.split.ffn_adapter import FFNAdapter, register


@register
class DistilBertAdapter(FFNAdapter):
    """``ffn.lin1 -> ffn.activation -> ffn.lin2``."""

    family = "distilbert"
    model_types = ("distilbert",)
    layers = "transformer.layer"
    fc_in = "ffn.lin1"
    act = "ffn.activation"
    fc_out = "ffn.lin2"
    replace = "ffn.lin1"
    identities = ("ffn.activation", "ffn.lin2")
    tasks = ("feature-extraction", "text-classification")
