"""The readability filter of rejection sampling (R1 stage 3), on hand-made responses."""
from pathlib import Path
from r1mega.config.rejection import RejectionConfig
from r1mega.pipeline.rejection import readability_reasons

RC = RejectionConfig(max_paragraph_chars=40, max_response_tokens=20, min_language_consistency=1.0)
OK = {"format": 1.0, "language": 1.0, "accuracy": 1.0}


def test_clean_response_is_accepted():
    assert readability_reasons("<think> 2+3=5. </think>\n\n<answer> 5 </answer>", 12, OK, RC) == []


def test_each_reason():
    assert readability_reasons("5", 1, {**OK, "format": 0.0}, RC) == ["format"]
    assert readability_reasons("x", 1, {**OK, "language": 0.8}, RC) == ["language_mixing"]
    assert readability_reasons("a" * 41, 1, OK, RC) == ["long_paragraph"]
    assert readability_reasons("short\n\n" + "b" * 30, 1, OK, RC) == []  # paragraphs are split on blank lines
    assert readability_reasons("```python\nx=1\n```", 1, OK, RC) == ["code_block"]
    assert readability_reasons("x", 21, OK, RC) == ["too_long"]
    assert readability_reasons("```" + "c" * 50, 30, {**OK, "format": 0.0}, RC) == \
        ["format", "long_paragraph", "code_block", "too_long"]


def test_language_threshold_is_configurable():
    lenient = RejectionConfig(min_language_consistency=0.7)
    assert readability_reasons("x", 1, {**OK, "language": 0.8}, lenient) == []


def test_manifest_hash_covers_only_what_the_stage_reads():
    import dataclasses

    from r1mega.config import load_config
    from r1mega.pipeline.manifest import config_hash

    def h(*overrides):
        cfg = load_config(str(Path(__file__).resolve().parents[2] / "examples/tiny/demo.yaml"), list(overrides), validate=False)
        st = cfg.stage("pretrain")
        return config_hash(cfg.for_stage(st).to_dict(), dataclasses.asdict(st))

    base = h()
    # sections a pretrain stage never reads, logging and the (reshardable) layout do not matter
    assert h("rejection.num_prompts=3", "grpo.group_size=4", "logging.tensorboard=false",
             "parallel.tensor_parallel=2", "parallel.sequence_parallel=true") == base
    assert h("optimizer.lr=1e-3") != base and h("pipeline.stages.pretrain.steps=7") != base
