"""The readability filter of rejection sampling (R1 stage 3), on hand-made responses."""
from pathlib import Path
from r1mega.config.rejection import RejectionConfig
from r1mega.pipeline.rejection import readability_reasons, select_samples

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


def test_select_samples_correct_readable_distinct_capped():
    from types import SimpleNamespace as NS

    good = "<think> 2+3=5. </think> <answer> 5 </answer>"
    bad = "<think> 2+3=6. </think> <answer> 6 </answer>"
    comps_ok, comps_wrong = OK, {**OK, "accuracy": 0.0}
    comps_mixed = {**OK, "language": 0.5}
    items = [NS(text="P0", gold="5", meta={"task": "arith"}), NS(text="P1", gold="5", meta={"task": "arith"})]
    c = [NS(text=good, token_ids=[0] * 10, prompt_index=0),  # kept
         NS(text=good + " ", token_ids=[0] * 10, prompt_index=0),  # duplicate after whitespace normalisation
         NS(text=bad, token_ids=[0] * 10, prompt_index=0),  # incorrect
         NS(text=good, token_ids=[0] * 10, prompt_index=1),  # kept (another prompt)
         NS(text=good, token_ids=[0] * 10, prompt_index=1)]  # mixed language (comps below)
    comps = [comps_ok, comps_ok, comps_wrong, comps_ok, comps_mixed]
    rows, stats = select_samples(c, comps, items, RejectionConfig(max_per_prompt=2))
    assert [(r["prompt"], r["correct"]) for r in rows] == [("P0", True), ("P1", True)]
    assert stats == {"candidates": 5, "rejected/duplicate_or_cap": 1, "rejected/incorrect": 1,
                     "rejected/language_mixing": 1, "accepted/incorrect": 0, "accepted/reasoning": 2}
    # baseline setting: the model's own answers whatever their correctness (readability still applies)
    rows, stats = select_samples(c, comps, items, RejectionConfig(max_per_prompt=2, require_correct=False))
    assert [(r["prompt"], r["response"], r["correct"]) for r in rows] == [("P0", good, True), ("P0", bad, False),
                                                                        ("P1", good, True)]
    assert stats["accepted/incorrect"] == 1 and stats["rejected/language_mixing"] == 1 and "rejected/incorrect" not in stats
    # the cap: one answer per prompt
    rows, _ = select_samples(c, comps, items, RejectionConfig(max_per_prompt=1, require_correct=False))
    assert [r["response"] for r in rows] == [good, good]


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
    assert h("optimizer.weight_decay=0.05") != base and h("pipeline.stages.pretrain.steps=7") != base
    assert h("optimizer.lr=1e-3") == base  # the stage overrides the lr: the top-level value never reaches it
