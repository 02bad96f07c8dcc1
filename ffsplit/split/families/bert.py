"""BERT and its descendants (RoBERTa, XLM-R, ELECTRA, CamemBERT, MPNet)."""

from ffsplit.split.ffn_adapter import FFNAdapter, register


@register
class BertAdapter(FFNAdapter):
    """``intermediate.dense -> act -> output.dense``, then residual + LayerNorm."""

    family = "bert"
    model_types = ("bert", "roberta", "xlm-roberta", "electra", "camembert", "mpnet")
    layers = "encoder.layer"
    fc_in = "intermediate.dense"
    act = "intermediate.intermediate_act_fn"
    fc_out = "output.dense"
    replace = "intermediate"
    identities = ("output.dense",)
    tasks = ("feature-extraction", "text-classification")
