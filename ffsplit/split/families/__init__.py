"""One module per architecture family, each registering its FFN adapter with ``@register``.

Importing this package registers them all; ``adapters.registry()`` does so on first use.
"""

from ffsplit.split.families import bert, distilbert, gpt2, llama, modernbert, opt, phi3

__all__ = ["bert", "distilbert", "gpt2", "llama", "modernbert", "opt", "phi3"]
