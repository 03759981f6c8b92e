"""Evaluation: k samples per held-out question at temperature 0.6 / top-p 0.95, graded by the rewards;
pass@1 (mean correctness), unbiased pass@k, cons@k (majority vote over math-verify equivalence classes),
per benchmark and difficulty. See docs/eval.md.

    from r1mega.eval import EvalConfig, EvalRunner, load_benchmarks
    problems = load_benchmarks(EvalConfig(benchmarks=["arith"], n_problems=20))
    with EvalRunner(engine, tokenizer, k=16) as runner:
        results = runner.run(problems)
    print(results_table(results))

Imports here are light (no torch, vLLM or Megatron until a runner samples or an engine is built).
"""
from r1mega.eval.benchmark import EvalProblem, load_benchmark, load_benchmarks
from r1mega.eval.config import EvalConfig, load_eval_config
from r1mega.eval.metrics import mean_pass_at_k, pass_at_1, pass_at_k
from r1mega.eval.report import format_table, print_table, results_table, write_json, write_samples
from r1mega.eval.runner import EvalResults, EvalRunner, ProblemResult, SampleResult, run_eval
from r1mega.eval.voting import MathEquivalence, Vote, answer_key, majority_vote

__all__ = ["EvalConfig", "EvalProblem", "EvalResults", "EvalRunner", "MathEquivalence", "ProblemResult",
           "SampleResult", "Vote", "answer_key", "format_table", "load_benchmark", "load_benchmarks",
           "load_eval_config", "majority_vote", "mean_pass_at_k", "pass_at_1", "pass_at_k", "print_table",
           "results_table", "run_eval", "write_json", "write_samples"]
