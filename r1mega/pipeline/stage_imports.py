"""Imported once by the stage scheduler's fork server (:mod:`r1mega.pipeline.scheduler`), so that every stage's
child process starts with torch, Megatron-Core, vLLM and transformers already imported (~10 s each otherwise).
Nothing here runs a kernel or starts a thread pool before the fork."""
import megatron.core  # noqa: F401
import torch  # noqa: F401
import transformers  # noqa: F401

try:  # the rollout engine; optional (a Megatron-only install still runs pipelines)
    import vllm  # noqa: F401
except ImportError:
    pass

import r1mega.cli  # noqa: F401,E402
