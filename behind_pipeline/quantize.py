"""Quantization of the course classifier (chapter 15): dynamic int8 of its Linear layers.

``dynamic_int8`` is what ``make bench`` and the service (``BTP_SERVICE_INT8=1``) use: the weights of every
``nn.Linear`` are stored as int8 with one scale per output row, activations are quantized on the fly batch by
batch, and the embeddings and LayerNorms stay fp32.
"""

import copy
import warnings

import torch


def dynamic_int8(classifier: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``classifier`` whose Linear layers run in int8 (``torch.ao.quantization.quantize_dynamic``)."""
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao, which the pinned stack does not include.
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(classifier).eval(), {torch.nn.Linear},
                                                      dtype=torch.qint8)
