"""Canaries for the vLLM-CPU bugs r1mega works around: run them when upgrading vLLM
(``R1MEGA_VLLM_CANARIES=1``; one extra engine start each). A failure here means the workaround may
no longer be needed, not that r1mega is broken.

* DeepseekV3 with vLLM-CPU's C++ rotary kernel (``custom_ops`` left at the default) is far from
  the trainer: ``r1mega.platform.vllm_settings`` must keep ``-rotary_embedding`` (the main parity
  test in test_vllm_engine.py fails if that flag is dropped).
"""
from __future__ import annotations

import os

import pytest

from rollout_support import HostClient, max_abs_diff

pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.environ.get("R1MEGA_VLLM_CANARIES") != "1",
                                                   reason="vLLM upgrade canary: set R1MEGA_VLLM_CANARIES=1")]


def test_deepseek_rotary_kernel_still_broken_on_cpu(tmp_path):
    host = HostClient(tmp_path)
    try:
        host("setup", "tiny", engine_kwargs={"compilation_config": {}})  # the C++ rotary kernel back on
        seqs = host("encode", ["What is 12+7? <think> 12+7 = 19 </think> <answer>19</answer>"])
        off = max_abs_diff(host("call", "vllm", "prompt_logprobs", seqs), host("trainer_logprobs", seqs))
        print(f"[canary] DeepseekV3 with vLLM-CPU's rotary kernel: max |dlogp| = {off:.3g}")
        assert off > 0.5, "vLLM-CPU's rotary kernel now handles MLA: the -rotary_embedding workaround may go"
    finally:
        host.close()
