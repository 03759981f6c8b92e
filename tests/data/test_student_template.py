"""Rejection-sampled data is text that a student of another tokenizer re-templates with its own chat template:
``samples.jsonl`` rows carry ``messages`` (the question as the data had it and the full answer, think/answer tags
included), so a student with ``data.template: hf_chat`` trains on exactly its own ``apply_chat_template`` of
them, with nothing of the teacher's template or tokenizer in it; a student on the teacher's own template trains
on exactly the ids the prompt/response rows gave before."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from student_tokenizer import STUDENT_SYSTEM, student_tokenizer_dir

from r1mega.config.rejection import RejectionConfig
from r1mega.data.batches import SFTBatches
from r1mega.data.prompts import TaskPrompts
from r1mega.data.templates import R1_ZERO, PromptRenderer
from r1mega.data.tokenizer import load_tokenizer
from r1mega.pipeline.rejection import select_samples

OK = {"accuracy": 1.0, "format": 1.0, "language": 1.0}


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
    return {"teacher": load_tokenizer(), "student": load_tokenizer(student_tokenizer_dir(tmp_path_factory.mktemp("s")))}


def _rows(tok, template):
    """Two accepted samples per prompt of 3 prompts, as rejection sampling writes them, from a teacher prompted
    with ``template`` (a prefilling one gets answers that start inside <think>)."""
    r = PromptRenderer(template, tok)
    items = TaskPrompts(tok, ["arith", "word"], [1, 2], template, seed=3, renderer=r).batch(0, 3)
    comps, outs = [], []
    for i, it in enumerate(items):
        for k in range(2):
            body = f" Step 1: {it.gold}={it.gold}{'.' * k} </think> <answer> {it.gold} </answer>"
            outs.append(SimpleNamespace(prompt_index=i, text=body if r.prefills_think else "<think>" + body,
                                        token_ids=[5] * 9, finish_reason="stop"))
            comps.append(OK)
    rows, stats = select_samples(outs, comps, items, RejectionConfig(), prefilled_think=r.prefills_think)
    assert stats["accepted/reasoning"] == 6
    return items, rows


def test_rows_keep_the_question_and_the_full_answer(toks):
    for template in ("r1_zero", "chat"):  # chat prefills <think>: the row's answer gets its opening tag back
        items, rows = _rows(toks["teacher"], template)
        for row in rows:
            item = next(i for i in items if i.text == row["prompt"])
            user, reply = row["messages"]
            assert user == {"role": "user", "content": item.question} and "Assistant" not in item.question
            assert reply["role"] == "assistant" and reply["content"].startswith("<think>")
            assert reply["content"].endswith(f"<answer> {item.gold} </answer>")
            assert reply["content"].count("<think>") == 1


def test_student_ids_are_its_own_chat_template(toks):
    """A teacher on the R1-Zero template and r1mega's tokenizer; a student with another tokenizer and ChatML."""
    student = toks["student"]
    _, rows = _rows(toks["teacher"], "r1_zero")
    data = SFTBatches(student, rows, seq_length=512, global_batch_size=6, renderer=PromptRenderer("hf_chat", student))
    for row, (ids, mask) in zip(rows, data.encoded):
        assert ids == list(student.apply_chat_template(row["messages"], tokenize=True, return_dict=False))
        text = student.decode(ids)
        assert R1_ZERO.split("{prompt}")[0] not in text and "User:" not in text  # nothing of the teacher's template
        assert text.startswith(f"<|im_start|>system\n{STUDENT_SYSTEM}<|im_end|>\n<|im_start|>user\n")
        # loss on exactly the answer (think/answer tags included) and the student's end-of-turn token
        assert student.decode([t for t, m in zip(ids, mask) if m]) == row["messages"][1]["content"] + "<|im_end|>"
    teacher_ids = toks["teacher"].encode(rows[0]["messages"][1]["content"], add_special_tokens=False)
    student_ids = student.encode(rows[0]["messages"][1]["content"], add_special_tokens=False)
    assert teacher_ids != student_ids  # (the tokenizers really differ)


@pytest.mark.parametrize("template", ["r1_zero", "chat"])
def test_same_template_student_trains_on_the_same_ids(toks, template):
    """A student on the teacher's own template and tokenizer (the demo): the messages rows give exactly the ids
    and loss mask the prompt/response rows gave (a prefilling template: the reply's <think> is the prompt's)."""
    tok = toks["teacher"]
    _, rows = _rows(tok, template)
    r = PromptRenderer(template, tok)
    new = SFTBatches(tok, rows, 512, 6, renderer=r).encoded
    old = SFTBatches(tok, [{"prompt": x["prompt"], "response": x["response"]} for x in rows], 512, 6, renderer=r).encoded
    assert new == old
