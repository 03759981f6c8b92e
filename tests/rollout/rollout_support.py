"""Test support for the rollout engines.

A vLLM engine takes seconds to start and there can be only one per process, so the vLLM tests
share one engine per architecture, hosted in a child process (:class:`EngineHost`, run as
``python rollout_support.py SOCKET``; the ``__main__`` guard vLLM needs). The host also builds the
Megatron trainer with deterministic non-trivial weights, so that engine, trainer, transformers and
the Megatron rollout engine are all compared on the same weights in one process, as in a real
colocated run. Tests call host methods through :class:`HostClient` (pickled calls over a socket).
"""
from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Optional

import torch

HERE = Path(__file__).resolve().parent


# ------------------------------------------------------------------------- weights
@torch.no_grad()
def randomize(engine, seed: int = 0) -> None:
    """Unit-scale activations (std 1/sqrt(fan_in)), norms near 1, a non-zero expert bias: log-probs
    far from uniform, so every wrong weight shows."""
    from r1mega.bridge.local import modules_of

    g = torch.Generator().manual_seed(seed)
    for module in modules_of(engine):
        for name, t in sorted(module.state_dict(keep_vars=True).items()):
            if not torch.is_tensor(t) or name.endswith("_extra_state"):
                continue
            noise = torch.randn(t.shape, generator=g)
            if name.endswith("expert_bias"):
                val = 0.1 * noise
            elif t.dim() == 1:
                val = 1.0 + 0.2 * noise
            elif "word_embeddings" in name:
                val = noise
            else:
                val = noise / math.sqrt(t.shape[1])
            t.data.copy_(val.to(t.dtype))


@torch.no_grad()
def perturb(engine, seed: int, scale: float = 0.05, vectors: bool = False) -> None:
    """A stand-in for an optimizer step: relative noise on every weight matrix (``vectors``: also on
    norms and biases)."""
    from r1mega.bridge.local import modules_of

    g = torch.Generator().manual_seed(seed)
    for module in modules_of(engine):
        for name, t in sorted(module.state_dict(keep_vars=True).items()):
            if torch.is_tensor(t) and (t.dim() == 2 or vectors and t.dim() == 1 and t.is_floating_point()) \
                    and not name.endswith("_extra_state"):
                t.data.add_(scale * t.std() * torch.randn(t.shape, generator=g).to(t.dtype))


def max_abs_diff(a: list, b) -> float:
    """max |a - b| over lists of per-sequence lists (b: lists or a [B,S] tensor)."""
    worst = 0.0
    for i, row in enumerate(a):
        ref = b[i].tolist() if torch.is_tensor(b) else b[i]
        worst = max([worst] + [abs(x - y) for x, y in zip(row, ref)])
    return worst


def pick_stop(tokenizer, token_ids: list, start: int = 3):
    """A stop string that first appears where ``token_ids[k]`` (k >= start) completes it."""
    text_before = ""
    for k, t in enumerate(token_ids):
        piece = tokenizer.decode([t], skip_special_tokens=True)
        if k >= start and len(piece.strip()) >= 1 and "\ufffd" not in piece:
            full = tokenizer.decode(token_ids[:k + 1], skip_special_tokens=True)
            if piece not in tokenizer.decode(token_ids[:k], skip_special_tokens=True) and full.endswith(piece):
                return k, piece
        text_before += piece
    return None, None


# ---------------------------------------------------------------------- the host
class EngineHost:
    """Lives in the child process: a trainer, its vLLM engine and (lazily) its Megatron engine."""

    def setup(self, preset: str, overrides=(), seed: int = 0, engine_kwargs=None) -> dict:
        from r1mega.config import load_config
        from r1mega.data.tokenizer import load_tokenizer
        from r1mega.rollout import make_engine
        from r1mega.train.engine import TrainEngine

        t0 = time.perf_counter()
        self.cfg = load_config(None, [f"model.preset={preset}", "data.seq_length=256", "rollout.max_new_tokens=16",
                                      "rollout.kv_cache_memory_bytes=67108864", *overrides])
        self.trainer = TrainEngine(self.cfg.model, self.cfg.parallel, None, mtp=False)
        randomize(self.trainer, seed)
        self.tokenizer = load_tokenizer(self.cfg.data.tokenizer_path)
        t1 = time.perf_counter()
        self.engines = {"vllm": make_engine(self.cfg, self.trainer, **(engine_kwargs or {}))}
        t2 = time.perf_counter()
        stats = self.engines["vllm"].refit(self.trainer)
        return {"trainer_s": t1 - t0, "vllm_start_s": t2 - t1, "refit": dataclasses.asdict(stats),
                "llm_kwargs": {k: v for k, v in self.engines["vllm"].llm_kwargs.items() if k != "model"}}

    def engine(self, which: str):
        if which not in self.engines:
            from r1mega.rollout import make_engine

            cfg = dataclasses.replace(self.cfg, rollout=dataclasses.replace(self.cfg.rollout, engine=which))
            self.engines[which] = make_engine(cfg, self.trainer)
        return self.engines[which]

    def call(self, which: str, method: str, *args, **kwargs):
        return getattr(self.engine(which), method)(*args, **kwargs)

    def attr(self, which: str, name: str):
        return getattr(self.engine(which), name)

    def settings(self) -> dict:
        return dataclasses.asdict(self.engines["vllm"].settings)

    def set_setting(self, name: str, value) -> None:
        e = self.engines["vllm"]
        e.settings = dataclasses.replace(e.settings, **{name: value})

    def encode(self, texts: list) -> list:
        return [self.tokenizer.encode(t) for t in texts]

    def decode(self, ids: list) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def pick_stop(self, token_ids: list):
        return pick_stop(self.tokenizer, token_ids)

    def trainer_logprobs(self, seqs: list, temperature: float = 1.0) -> list:
        from r1mega.train.batching import lm_batch

        lp = self.trainer.logprobs(lm_batch(seqs), temperature=temperature)
        return [lp[i, :len(s) - 1].tolist() for i, s in enumerate(seqs)]

    def hf_logprobs(self, seqs: list, config_changes: Optional[dict] = None) -> list:
        """transformers' own model (fp32) on the bridge's export of the trainer's weights (``config_changes``:
        keys replaced in its config.json, e.g. to show what a setting is worth)."""
        import transformers
        from safetensors.torch import save_file

        from r1mega.bridge import hf_state_dict, to_hf_config, write_hf_config

        sd = hf_state_dict(self.trainer, self.cfg.model, self.cfg.parallel)
        with tempfile.TemporaryDirectory() as d:
            save_file({k: v.contiguous() for k, v in sd.items()}, f"{d}/model.safetensors", metadata={"format": "pt"})
            extra = {"num_nextn_predict_layers": 0} if self.cfg.model.arch == "deepseek_v3" else {}
            write_hf_config({**to_hf_config(self.cfg.model, dtype="float32", extra=extra), **(config_changes or {})}, d)
            model = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        out = []
        with torch.no_grad():
            for s in seqs:
                lp = model(torch.tensor([s])).logits[0].float().log_softmax(-1)
                out.append([float(lp[t, s[t + 1]]) for t in range(len(s) - 1)])
        return out

    def perturb(self, seed: int, scale: float = 0.05, vectors: bool = False) -> None:
        perturb(self.trainer, seed, scale, vectors)

    def refit(self, transport=None) -> dict:
        return dataclasses.asdict(self.engines["vllm"].refit(self.trainer, transport=transport))

    def shutdown_vllm(self) -> dict:
        """Shut the vLLM engine down; whether its model (and vLLM's reload records of it) outlived it."""
        import gc
        import weakref

        from vllm.model_executor.model_loader.reload import layerwise

        from r1mega.rollout.refit import _worker_model

        engine = self.engines.pop("vllm")
        model = engine.llm.collective_rpc(_worker_model)[0]
        ref, records = weakref.ref(model), sum(m in layerwise.LAYERWISE_INFO for m in model.modules())
        del model
        engine.shutdown()
        del engine
        gc.collect()
        return {"records_before": records, "model_alive": ref() is not None,
                "records_after": len(layerwise.LAYERWISE_INFO)}

    def check_rollouts(self, rollouts, threshold, temperature=None, force=False):
        from r1mega.rollout import check_rollouts

        return check_rollouts(rollouts, self.trainer, threshold, temperature=temperature, force=force)


def serve(address: str) -> None:
    from multiprocessing.connection import Listener

    host = EngineHost()
    with Listener(address, authkey=b"r1mega-tests") as listener, listener.accept() as conn:
        while True:
            try:
                msg = conn.recv()
            except EOFError:
                return
            if msg is None:
                return
            name, args, kwargs = msg
            try:
                conn.send(("ok", getattr(host, name)(*args, **kwargs)))
            except BaseException as e:  # report every failure to the test, keep serving
                try:
                    conn.send(("err", e, traceback.format_exc()))
                except Exception:
                    conn.send(("err", None, traceback.format_exc()))


# ---------------------------------------------------------------------- the client
class HostError(RuntimeError):
    pass


_DIST_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
              "TORCHELASTIC_RUN_ID")


def child_env(**extra) -> dict:
    """A child's environment: one thread (tiny models; immune to a busy machine's OpenMP spin-waits),
    quiet vLLM, none of this process's torch.distributed variables (its port is taken), and this
    checkout first on the path (a child run as a script would import the installed r1mega, which
    from a git worktree is another checkout's)."""
    env = {k: v for k, v in os.environ.items() if k not in _DIST_VARS}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE.parents[1]), env.get("PYTHONPATH")) if p)
    env.update({"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "VLLM_LOGGING_LEVEL": "WARNING",
                "TOKENIZERS_PARALLELISM": "false"})
    env.update(extra)
    return env


class HostClient:
    """Starts an :class:`EngineHost` child process and calls its methods."""

    def __init__(self, workdir: Path, timeout: float = 600):
        from multiprocessing.connection import Client

        self.workdir = Path(workdir)
        self.log_path = self.workdir / "host.log"
        address = str(self.workdir / "host.sock")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, str(HERE / "rollout_support.py"), address],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=child_env(), cwd=str(HERE.parents[1]))
        self.timeout = timeout
        deadline = time.time() + 120
        while True:  # the socket file appears at bind(), a moment before listen(): refused until then
            if os.path.exists(address):
                try:
                    self.conn = Client(address, authkey=b"r1mega-tests")
                    break
                except ConnectionRefusedError:
                    pass
            if self.proc.poll() is not None or time.time() > deadline:
                raise HostError(f"engine host did not start:\n{self.tail()}")
            time.sleep(0.05)

    def tail(self, n: int = 6000) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-n:]

    def __call__(self, name: str, *args, **kwargs):
        self.conn.send((name, args, kwargs))
        deadline = time.time() + self.timeout
        while not self.conn.poll(0.1):
            if self.proc.poll() is not None or time.time() > deadline:
                raise HostError(f"engine host died or timed out in {name}():\n{self.tail()}")
        status, *rest = self.conn.recv()
        if status == "ok":
            return rest[0]
        exc, tb = rest
        if isinstance(exc, Exception):
            raise exc from HostError(tb)
        raise HostError(tb)

    def close(self) -> None:
        try:
            self.conn.send(None)
            self.proc.wait(timeout=30)
        except Exception:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    serve(sys.argv[1])


def check_refits(host, architecture: str, parity: float) -> None:
    """The served config names ``architecture``; after the start-up refit and after a refit that changes every
    weight (matrices, biases, norms, routers): vLLM == trainer == transformers within ``parity`` and the probe
    ran. Prints the figures."""
    import json

    served = json.loads((Path(host("attr", "vllm", "model_dir")) / "config.json").read_text())
    assert served["architectures"] == [architecture]
    stats = host.info["refit"]
    for round_ in range(2):
        vllm = host("call", "vllm", "prompt_logprobs", host.seqs)
        trainer = host("trainer_logprobs", host.seqs)
        hf = host("hf_logprobs", host.seqs)
        figures = (max_abs_diff(vllm, trainer), max_abs_diff(vllm, hf))
        probe = host("attr", "vllm", "last_probe")
        print(f"{host.case} refit {round_ + 1}: max |vLLM - trainer| {figures[0]:.2e}, |vLLM - transformers| "
              f"{figures[1]:.2e}; probe mean {probe['mean_abs']:.2e} max {probe['max_abs']:.2e} over {probe['tokens']} "
              f"tokens; refit {stats['tensors']} tensors, {stats['bytes'] / 2**20:.1f} MiB in {stats['seconds'] * 1e3:.0f} ms")
        assert figures[0] < parity and figures[1] < parity, (host.case, round_, figures)
        assert probe["tokens"] > 40 and probe["mean_abs"] < parity
        host("perturb", 1 + round_, 0.5, vectors=True)  # every weight changes, biases/norms/routers too
        stats = host("refit")
