"""r1mega: the DeepSeek-R1 recipe on Megatron-Core + vLLM."""
__version__ = "0.1.0"
