"""The weight bridge between Megatron-Core and Hugging Face (see docs/bridge.md).

One mapping table per architecture (:mod:`.table`) serves three users: the refit of the vLLM
rollout engine (:func:`export_hf_weights`), the checkpoint converter (``r1mega convert``) and
the log-prob parity tests against transformers.
"""
from .export import export_hf_weights, hf_state_dict
from .hf_config import from_hf_config, read_hf_config, to_hf_config, write_hf_config
from .import_ import load_hf_weights, open_checkpoint
from .table import BridgeError, BridgeTable, mapping_table

__all__ = ["BridgeError", "BridgeTable", "export_hf_weights", "from_hf_config", "hf_state_dict", "load_hf_weights",
           "mapping_table", "open_checkpoint", "read_hf_config", "to_hf_config", "write_hf_config"]
