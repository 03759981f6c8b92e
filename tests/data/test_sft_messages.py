"""SFT rows in ``messages`` form: the whole conversation rendered by the chat template, loss on exactly
the assistant turns (content + end-of-turn token); prompt/response rows through the stage's renderer;
errors that name the file and row."""
from __future__ import annotations

import json

import pytest
from chat_fixtures import DEEPSEEK_DROPS_REASONING, EOS_DS, chatml_dir, deepseek_dir

from r1mega.config.loader import load_config
from r1mega.data.batches import SFTBatches, SFTDataError, read_sft_rows
from r1mega.data.templates import PromptRenderer, render
from r1mega.data.tokenizer import load_tokenizer

A1 = "<think> 2+3=5 </think> <answer> 5 </answer>"
A2 = "<think> 5*2=10 </think> <answer> 10 </answer>"
TWO_TURNS = [{"role": "system", "content": "Be brief."},
             {"role": "user", "content": "What is 2+3?"}, {"role": "assistant", "content": A1},
             {"role": "user", "content": "And times 2?"}, {"role": "assistant", "content": A2}]


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft_toks")
    return {"chatml": load_tokenizer(chatml_dir(root)), "deepseek": load_tokenizer(deepseek_dir(root)),
            "drops": load_tokenizer(deepseek_dir(root, DEEPSEEK_DROPS_REASONING, "drops")),
            "builtin": load_tokenizer()}


def _runs(mask):
    """[start, end) of each run of 1s."""
    runs, start = [], None
    for k, m in enumerate(list(mask) + [0]):
        if m and start is None:
            start = k
        elif not m and start is not None:
            runs.append((start, k))
            start = None
    return runs


def _sft(tok, rows, template="hf_chat", **kw):
    return SFTBatches(tok, rows, seq_length=512, global_batch_size=len(rows), renderer=PromptRenderer(template, tok), **kw)


def test_two_turn_chatml_mask_is_exactly_the_assistant_turns(toks):
    tok = toks["chatml"]
    ids, mask = _sft(tok, [{"messages": TWO_TURNS}]).encoded[0]
    assert ids == list(tok.apply_chat_template(TWO_TURNS, tokenize=True, return_dict=False))
    pieces = [tok.decode(ids[a:b]) for a, b in _runs(mask)]
    assert pieces == [A1 + "<|im_end|>", A2 + "<|im_end|>"]  # not the headers, not the "\n" after <|im_end|>
    assert tok.decode([t for t, m in zip(ids, mask) if m]) == A1 + "<|im_end|>" + A2 + "<|im_end|>"
    # each run starts right after the assistant header, and what precedes it has no loss
    for a, _ in _runs(mask):
        assert tok.decode(ids[:a]).endswith("<|im_start|>assistant\n")
    assert sum(mask) == len(tok.encode(A1 + "<|im_end|>" + A2 + "<|im_end|>", add_special_tokens=False))


def test_batch_loss_mask_follows_the_token_mask(toks):
    tok = toks["chatml"]
    data = _sft(tok, [{"messages": TWO_TURNS}, {"messages": TWO_TURNS[:3]}])
    b = data.batch(0)
    for i in range(2):
        ids, mask = data.encoded[data._order(0)[i]]
        labels = b["labels"][i, :len(ids) - 1].tolist()
        lm = b["loss_mask"][i].tolist()
        assert labels == ids[1:]
        assert lm[:len(ids) - 1] == [float(m) for m in mask[1:]] and sum(lm[len(ids) - 1:]) == 0
    assert int(b["loss_mask"].sum()) == sum(sum(m) for _, m in data.encoded)


def test_deepseek_style_loss_starts_after_the_think_prefill(toks):
    tok = toks["deepseek"]
    reply = "<think>\n2+3=5\n</think>\n<answer>5</answer>"
    conv = [{"role": "user", "content": "What is 2+3?"}, {"role": "assistant", "content": reply}]
    ids, mask = _sft(tok, [{"messages": conv}]).encoded[0]
    assert ids == list(tok.apply_chat_template(conv, tokenize=True, return_dict=False))
    # the generation prompt already wrote "<think>\n": the model learns what follows, and the EOS that ends the turn
    assert [tok.decode(ids[a:b]) for a, b in _runs(mask)] == ["2+3=5\n</think>\n<answer>5</answer>" + EOS_DS]


def test_template_that_rewrites_earlier_turns_is_refused(toks):
    tok = toks["drops"]
    conv = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "<think>\na</think>1"},
            {"role": "user", "content": "q2"}, {"role": "assistant", "content": "<think>\nb</think>2"}]
    with pytest.raises(SFTDataError, match=r"^row 1: the chat template is not prefix-stable at message 1"):
        _sft(tok, [{"messages": conv}])
    _sft(tok, [{"messages": conv[:2]}])  # one turn: nothing earlier is rewritten


def test_prompt_response_rows_through_the_renderer(toks):
    tok = toks["chatml"]
    conv = TWO_TURNS[1:3]
    ids_m, mask_m = _sft(tok, [{"messages": conv}]).encoded[0]
    for prompt in ("What is 2+3?", PromptRenderer("hf_chat", tok).render("What is 2+3?")[0]):  # bare / templated
        ids_p, mask_p = _sft(tok, [{"prompt": prompt, "response": A1}]).encoded[0]
        # the same tokens and loss, up to the template's "\n" after <|im_end|>
        assert ids_m == ids_p + tok.encode("\n", add_special_tokens=False)
        assert mask_p == mask_m[:-1]


def test_builtin_template_messages_are_prompt_response(toks):
    tok = toks["builtin"]
    q, a = "What is 2+3?", A1
    templated = _sft(tok, [{"prompt": render("r1_zero", q), "response": a}], "r1_zero").encoded[0]
    as_msgs = _sft(tok, [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}],
                   "r1_zero").encoded[0]
    want = tok.encode(render("r1_zero", q)) + tok.encode(a, add_special_tokens=False) + [tok.eos_token_id]
    assert templated[0] == as_msgs[0] == want
    n_prompt = len(tok.encode(render("r1_zero", q)))
    assert templated[1] == as_msgs[1] == [0] * n_prompt + [1] * (len(want) - n_prompt)
    # a prompt/response row's prompt is the full prompt text under the built-in templates, as before
    verbatim = _sft(tok, [{"prompt": "1+1=", "response": "2"}], "r1_zero").encoded[0]
    assert verbatim == ([1] + tok.encode("1+1=", add_special_tokens=False) + tok.encode("2", add_special_tokens=False) + [2],
                        [0] * (1 + len(tok.encode("1+1=", add_special_tokens=False))) + [1, 1])
    with pytest.raises(SFTDataError, match=r"row 1: with template 'r1_zero' a 'messages' row must be one user turn.*hf_chat"):
        _sft(tok, [{"messages": TWO_TURNS}], "r1_zero")


def test_bad_rows_name_the_file_and_line(toks, tmp_path):
    path = tmp_path / "sft.jsonl"
    good = {"messages": TWO_TURNS[1:3]}
    path.write_text(json.dumps(good) + "\n\n" + json.dumps({"prompt": "q"}) + "\n")
    rows, where = read_sft_rows(path)
    assert where == [f"{path}:1", f"{path}:3"]
    with pytest.raises(SFTDataError, match=rf"^{path}:3: an SFT row needs 'messages', or 'prompt' and 'response'; got keys \['prompt'\]"):
        _sft(toks["chatml"], rows, where=where)
    path.write_text(json.dumps(good) + "\n" + json.dumps({"messages": [{"role": "user", "content": "q"}]}) + "\n")
    with pytest.raises(SFTDataError, match=rf"^{path}:2: no assistant turn to train on"):
        _sft(toks["chatml"], *read_sft_rows(path)[:1], where=read_sft_rows(path)[1])
    path.write_text(json.dumps({"messages": [{"role": "bot", "content": "q"}]}) + "\n")
    with pytest.raises(SFTDataError, match=rf"^{path}:1: message 0 has role 'bot'"):
        _sft(toks["chatml"], *read_sft_rows(path)[:1], where=read_sft_rows(path)[1])


def test_train_entry_batches_read_messages_files(toks, tmp_path):
    """The SFT stage's data (r1mega.train.entry._batches): JSONL of messages rows rendered with data.template."""
    from r1mega.config.stage import StageConfig
    from r1mega.train.entry import _batches

    tok_dir = tmp_path / "tok"
    toks["chatml"].save_pretrained(str(tok_dir))
    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps({"messages": TWO_TURNS}) + "\n" + json.dumps({"prompt": "x", "response": "y"}) + "\n")
    cfg = load_config(None, [f"data.tokenizer_path={tok_dir}", "data.template=hf_chat", f"data.train_paths=[\"{path}\"]",
                             "optimizer.global_batch_size=2"], validate=False)
    stage = StageConfig(name="sft", kind="sft")
    data = _batches(cfg, stage, toks["chatml"])
    assert data.encoded[0] == _sft(toks["chatml"], [{"messages": TWO_TURNS}]).encoded[0]
    path.write_text(json.dumps({"messages": TWO_TURNS}) + "\n" + json.dumps({"text": "x"}) + "\n")
    with pytest.raises(SFTDataError, match=rf"^{path}:2: an SFT row needs"):
        _batches(cfg, stage, toks["chatml"])
