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

from r1mega.platform.lifeline import die_with_parent  # noqa: E402

# The fork server itself ends with the scheduler (SIGKILL), kill -9 included: left to end by itself when the
# scheduler is gone, it shut its interpreter (torch, Megatron-Core, vLLM) down for 5-14 s on a busy machine, a
# process of the run outliving it (found by tools/chaos.py). Its stage processes have their own lifelines.
die_with_parent()
