"""Language consistency: script detection, neutral tokens, hand-computed shares, optional langid."""
from __future__ import annotations

import pytest

from r1mega.config.base import ConfigError
from r1mega.config.rewards import LanguageRewardConfig
from r1mega.rewards.language import langid_available, language_consistency, unit_counts
from r1mega.rewards.scripts import char_script, count_units, strip_neutral_spans

EN = LanguageRewardConfig(target="en")
ZH = LanguageRewardConfig(target="zh")


def test_char_scripts():
    assert [char_script(c) for c in "aé中あカ한дαع"] == ["Latin", "Latin", "Han", "Hiragana", "Katakana", "Hangul",
                                                        "Cyrillic", "Greek", "Arabic"]
    assert [char_script(c) for c in "7,。！ +"] == [None] * 6


def test_units_cjk_per_character_words_otherwise():
    assert count_units("Let me compute 3+4. 所以答案是七") == {"Latin": 3, "Han": 6}
    assert count_units("これはテストです") == {"Hiragana": 5, "Katakana": 3}
    assert count_units("한국어 문장 입니다") == {"Hangul": 3}
    assert count_units("Привет мир, x = 5") == {"Cyrillic": 2}
    assert count_units("नमस्ते दुनिया") == {"Devanagari": 2}     # combining vowel signs stay in the word
    assert count_units("café naïve") == {"Latin": 2}
    assert count_units("<think>one two</think>") == {"Latin": 2}   # tags are neutral


def test_numbers_math_code_punctuation_are_neutral():
    assert count_units("3 + 4 = 7, 12.5% !!! ... 2^{10}") == {}
    assert count_units(r"$\frac{a}{b}$ and $$x^2 + y^2$$ \(z\) \[w\] so") == {"Latin": 2}
    assert count_units("run `some_code here` then ```python\nprint('hello world')\n``` ok") == {"Latin": 3}
    assert count_units("Let x be n") == {"Latin": 2}          # one-letter variables are neutral
    assert strip_neutral_spans("a $ b") == "a $ b"             # an unclosed $ is kept as text


def test_mixed_english_chinese_exact_share():
    # CoT units: Let, me, compute (3 Latin words) + 所以答案是七 (6 Han characters); 3+4 is neutral.
    response = "<think>Let me compute 3+4. 所以答案是七</think><answer>7</answer>"
    assert language_consistency(response, EN) == pytest.approx(3 / 9)
    assert language_consistency(response, ZH) == pytest.approx(6 / 9)
    # only the think block counts by default; scope='response' adds the answer's words
    resp2 = "<think>计算一下</think><answer>The answer is seven</answer>"
    assert language_consistency(resp2, ZH) == 1.0
    assert language_consistency(resp2, LanguageRewardConfig(target="zh", scope="response")) == pytest.approx(4 / 8)


def test_japanese_target_accepts_kanji_and_kana():
    cfg = LanguageRewardConfig(target="ja")
    assert language_consistency("<think>答えは七です</think>", cfg) == 1.0
    assert language_consistency("<think>答えは七です so</think>", cfg) == pytest.approx(6 / 7)


def test_empty_and_math_only_reasoning_uses_empty_value():
    assert language_consistency("<think>3+4=7</think><answer>7</answer>", EN) == 0.0
    cfg = LanguageRewardConfig(target="en", empty_value=1.0)
    assert language_consistency("<think>3+4=7</think><answer>7</answer>", cfg) == 1.0


def test_scripts_override_and_prefill():
    cfg = LanguageRewardConfig(scripts=["Cyrillic"])
    assert language_consistency("<think>Считаем dann</think>", cfg) == 0.5
    # chat template prefills <think>: the response starts inside it
    assert language_consistency("thinking here</think><answer>1</answer>", EN, think_prefilled=True) == 1.0


def test_language_config_validation():
    with pytest.raises(ConfigError, match="rewards.language.target"):
        LanguageRewardConfig(target="xx").validate()
    with pytest.raises(ConfigError, match="rewards.language.scope"):
        LanguageRewardConfig(scope="all").validate()
    with pytest.raises(ConfigError, match="rewards.language.scripts"):
        LanguageRewardConfig(scripts=["Klingon"]).validate()


@pytest.mark.skipif(not langid_available(), reason="py3langid not installed")
def test_langid_separates_english_from_french():
    cfg = LanguageRewardConfig(target="en", use_langid=True)
    cfg.validate()
    en = "Let me compute the sum of the first terms carefully."   # 10 words
    fr = "Calculons la somme des premiers termes."                 # 6 words
    assert unit_counts(en, cfg) == (10, 0)
    assert unit_counts(fr, cfg) == (0, 6)
    response = f"<think>{en}\n{fr}</think><answer>1</answer>"
    assert language_consistency(response, cfg) == pytest.approx(10 / 16)
    # without langid both are Latin script: fully "consistent"
    assert language_consistency(response, EN) == 1.0
    fr_target = LanguageRewardConfig(target="fr", use_langid=True)
    assert language_consistency(response, fr_target) == pytest.approx(6 / 16)


def test_language_speed_on_long_reasoning():
    import time

    text = "<think>" + "Let me think about this problem carefully, 3+4=7. 我们再想想。" * 3000 + "</think>"
    t = time.monotonic()
    share = language_consistency(text, EN)
    assert time.monotonic() - t < 2.0
    assert share == pytest.approx(7 / 12)   # 7 Latin words vs 5 Han chars per repetition


def test_target_prompt_scores_against_each_samples_prompt_language(computer):
    from r1mega.config.rewards import RewardsConfig
    from r1mega.rewards import RewardSample
    from r1mega.rewards.language import for_prompt

    cfg = LanguageRewardConfig()  # the default target: the prompt's language
    assert cfg.target == "prompt" and cfg.prompt_default == "en"
    assert for_prompt(cfg, "zh").target == "zh" and for_prompt(cfg, None).target == "en"
    assert for_prompt(cfg, "xx").target == "en" and for_prompt(EN, "zh") is EN
    en_steps = "<think> Step 1: 7-3=4. Step 2: 4*2=8. </think> <answer> 8 </answer>"
    zh_steps = "<think> 第1步：7-3=4。第2步：4*2=8。 </think> <answer> 8 </answer>"
    # units: "Step" x2 (Latin); 第 步 第 步 (Han, one unit each)
    mixed = "<think> Step 1: 7-3=4. 第2步：4*2=8。 </think> <answer> 8 </answer>"
    rc = computer(RewardsConfig(weights={"math": {"language": 1.0}}))
    samples = [RewardSample(t, "math", "8", metadata={"lang": lang} if lang else {})
               for t, lang in [(en_steps, "en"), (en_steps, "zh"), (zh_steps, "zh"), (zh_steps, None),
                               (mixed, "zh"), (mixed, "en")]]
    assert rc.score(samples).components["language"] == [1.0, 0.0, 1.0, 0.0, pytest.approx(2 / 3), pytest.approx(1 / 3)]
    LanguageRewardConfig(target="prompt").validate()
    with pytest.raises(ConfigError, match="prompt_default"):
        LanguageRewardConfig(prompt_default="xx").validate()
