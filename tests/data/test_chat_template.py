"""data.template hf_chat: the tokenizer's own chat template, ids equal to transformers', system prompt,
<think> prefill (configured or derived from the template), stop tokens, and the template surviving
r1mega's tokenizer load/save."""
from __future__ import annotations

import dataclasses
import json

import pytest
from chat_fixtures import BOS_DS, EOS_DS, chatml_dir, deepseek_dir, smollm2_dir

from r1mega.config.base import ConfigError
from r1mega.config.data import DataConfig
from r1mega.config.rewards import RewardsConfig
from r1mega.data.chat import ChatTemplateError
from r1mega.data.templates import PromptRenderer, render, rewards_for_template
from r1mega.data.tokenizer import load_tokenizer, save_tokenizer_copy

CONVERSATIONS = [
    "What is 2+3?",
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 7*8?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<think> greet </think> <answer> Hello </answer>"},
     {"role": "user", "content": "What is 12-5?"}],
]


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat_toks")
    return {"chatml": load_tokenizer(chatml_dir(root)), "deepseek": load_tokenizer(deepseek_dir(root))}


def _transformers(tok, x):
    msgs = [{"role": "user", "content": x}] if isinstance(x, str) else x
    text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
    return text, list(ids)


@pytest.mark.parametrize("name", ["chatml", "deepseek"])
def test_hf_chat_text_and_ids_equal_transformers(toks, name):
    tok = toks[name]
    r = PromptRenderer("hf_chat", tok)
    for x in CONVERSATIONS:
        assert r.render(x) == _transformers(tok, x)


def test_hf_chat_chatml_hand_checked(toks):
    tok = toks["chatml"]
    text, ids = PromptRenderer("hf_chat", tok).render("What is 2+3?")
    assert text == "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n"
    im_start, im_end = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert ids[0] == im_start and ids.count(im_start) == 2 and ids.count(im_end) == 1
    assert tok.bos_token_id not in ids  # the template writes no BOS; encoding the text with specials would add one
    assert tok.encode(text)[0] == tok.bos_token_id


def test_hf_chat_deepseek_bos_once_and_think_derived(toks):
    tok = toks["deepseek"]
    r = PromptRenderer("hf_chat", tok)
    text, ids = r.render("What is 2+3?")
    assert text == f"{BOS_DS}<｜User｜>What is 2+3?<｜Assistant｜><think>\n"
    assert ids[0] == tok.convert_tokens_to_ids(BOS_DS) and ids.count(ids[0]) == 1
    assert 1 not in ids  # the built-in post-processor's <bos> (id 1) is not added
    assert r.prefills_think  # derived: the template's generation prompt ends with <think>
    # think_prefill on a template that already opens <think>: not twice
    assert PromptRenderer("hf_chat", tok, think_prefill=True).render("q")[0].count("<think>") == 1


def test_hf_chat_system_prompt_and_think_prefill(toks):
    tok = toks["chatml"]
    r = PromptRenderer("hf_chat", tok, system_prompt="Be brief.", think_prefill=True)
    text, ids = r.render("What is 2+3?")
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+3?<|im_end|>\n"
                    "<|im_start|>assistant\n<think>\n")
    assert ids == tok.encode(text, add_special_tokens=False)
    assert ids[-2:] == tok.encode("<think>\n", add_special_tokens=False)  # one added token + newline
    assert r.prefills_think and not PromptRenderer("hf_chat", tok).prefills_think
    # messages that bring their own system turn keep it; system_prompt is not added
    own = [{"role": "system", "content": "Own."}, {"role": "user", "content": "q"}]
    assert r.render(own)[0].startswith("<|im_start|>system\nOwn.<|im_end|>\n<|im_start|>user")
    assert "Be brief." not in r.render(own)[0]


def test_builtin_templates_unchanged():
    tok = load_tokenizer()
    r = PromptRenderer("r1_zero", tok)
    assert r.render("What is 2+3?") == (render("r1_zero", "What is 2+3?"), tok.encode(render("r1_zero", "What is 2+3?")))
    assert r.render("q")[1][0] == tok.bos_token_id
    assert not r.prefills_think and PromptRenderer("chat", tok).prefills_think
    assert r.stop_token_ids() == (tok.eos_token_id,)
    with pytest.raises(ValueError, match="hf_chat"):
        PromptRenderer("r1_zero", tok, system_prompt="x")


def test_hf_chat_refused_without_template():
    with pytest.raises(ChatTemplateError, match="'hf_chat' needs a tokenizer with a chat template"):
        PromptRenderer("hf_chat", load_tokenizer())


def test_stop_token_ids(toks, tmp_path):
    chatml, ds = toks["chatml"], toks["deepseek"]
    im_end = chatml.convert_tokens_to_ids("<|im_end|>")
    assert chatml.eos_token_id == 2 and im_end == 513
    assert PromptRenderer("hf_chat", chatml).stop_token_ids() == (2, 513)  # EOS, then the end-of-turn token
    assert PromptRenderer("hf_chat", chatml).end_of_turn_id() == 513
    eos_ds = ds.convert_tokens_to_ids(EOS_DS)
    assert PromptRenderer("hf_chat", ds).stop_token_ids() == (eos_ds,)  # its end of turn is the EOS itself
    # generation_config.json beside the tokenizer wins over the tokenizer's EOS (int or list)
    d = tmp_path / "with_gen"
    chatml.save_pretrained(str(d))
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [513, 0]}))
    assert PromptRenderer("hf_chat", load_tokenizer(d)).stop_token_ids() == (513, 0)
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": 0}))
    assert PromptRenderer("hf_chat", load_tokenizer(d)).stop_token_ids() == (0, 513)
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": "x"}))
    with pytest.raises(ChatTemplateError, match="generation_config.json: eos_token_id must be an int or a list"):
        PromptRenderer("hf_chat", load_tokenizer(d)).stop_token_ids()


def test_template_and_generation_config_survive_load_and_save(toks, tmp_path):
    src = tmp_path / "src"
    toks["chatml"].save_pretrained(str(src))
    (src / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 513]}))
    out = save_tokenizer_copy(load_tokenizer(src), src, tmp_path / "stage" / "tokenizer")
    again = load_tokenizer(out)
    assert again.chat_template == toks["chatml"].chat_template
    assert json.loads((out / "generation_config.json").read_text()) == {"eos_token_id": [2, 513]}
    for x in CONVERSATIONS:
        assert PromptRenderer("hf_chat", again).render(x) == PromptRenderer("hf_chat", toks["chatml"]).render(x)


def test_rewards_think_prefilled_derived(toks):
    rc = RewardsConfig()
    assert rewards_for_template(rc, PromptRenderer("hf_chat", toks["deepseek"])).format.think_prefilled is True
    assert rewards_for_template(rc, PromptRenderer("hf_chat", toks["chatml"])).format.think_prefilled is False
    tok = load_tokenizer()
    assert rewards_for_template(rc, PromptRenderer("chat", tok)).format.think_prefilled is True
    set_true = dataclasses.replace(rc, format=dataclasses.replace(rc.format, think_prefilled=True))
    assert rewards_for_template(set_true, PromptRenderer("chat", tok)).format.think_prefilled is True  # agrees
    with pytest.raises(ConfigError, match="rewards.format.think_prefilled.*'r1_zero' do not end with <think>"):
        rewards_for_template(set_true, PromptRenderer("r1_zero", tok))


def test_data_config_fields():
    DataConfig(template="hf_chat", system_prompt="Be brief.", think_prefill=True).validate()
    with pytest.raises(ConfigError, match=r"data.system_prompt.*'hf_chat' only \(template is 'r1_zero'\)"):
        DataConfig(system_prompt="Be brief.").validate()
    with pytest.raises(ConfigError, match="data.think_prefill.*expected true/false"):
        DataConfig(template="hf_chat", think_prefill="yes").validate()
    with pytest.raises(ConfigError, match="data.template.*'hf_chat'"):
        DataConfig(template="chatml").validate()


def test_smollm2_real_chat_template(tmp_path):
    tok = load_tokenizer(smollm2_dir(tmp_path))
    r = PromptRenderer("hf_chat", tok)
    text, ids = r.render("What is 2+3?")
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                    "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n")
    for x in CONVERSATIONS:
        assert r.render(x) == _transformers(tok, x)
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>") == 1 and ids.count(1) == 3
    assert r.stop_token_ids() == (2,)  # <|im_end|> is SmolLM2's EOS and its end of turn
    assert not r.prefills_think
