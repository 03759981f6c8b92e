"""A complete stage is skipped on a rerun only while what it started from is unchanged: its init stage is not
about to run again, and neither that stage nor the init checkpoint path changed since it completed (the
manifest records ``init_stamp``). Before, a rerun of GRPO (manifest deleted) kept the old eval results of the
previous GRPO checkpoint without a word."""
from __future__ import annotations

import dataclasses
import json
import os

import pytest

from r1mega.config import load_config
from r1mega.config.base import ConfigError
from r1mega.pipeline import manifest
from r1mega.pipeline.runner import init_stamp, plan


def _cfg(tmp_path, ckpt):
    stages = (f"[{{name: pre, kind: pretrain, steps: 1}}, {{name: ev, kind: eval, init_from: pre}}, "
              f"{{name: ev_base, kind: eval, init_from: {ckpt}}}]")
    return load_config(None, ["model.preset=tiny-dense", f"pipeline.run_dir={tmp_path / 'run'}",
                              f"pipeline.stages={stages}"])


def _complete(cfg, name, **extra):
    st = cfg.stage(name)
    h = manifest.config_hash(cfg.for_stage(st).to_dict(), dataclasses.asdict(st))
    manifest.write(cfg.stage_dir(st), stage=name, kind=st.kind, status="complete", config_hash=h,
                   init_from=st.init_from, init_stamp=init_stamp(cfg, st), started=extra.pop("started", "t0"), **extra)


def test_a_complete_stage_whose_init_changed_is_refused(tmp_path):
    ckpt = tmp_path / "base"
    step = ckpt / "step_00000000"
    step.mkdir(parents=True)
    (ckpt / "latest").write_text("step_00000000")
    meta = step / "r1mega_meta.json"
    meta.write_text(json.dumps({"step": 0, "model": dataclasses.asdict(load_config(None, ["model.preset=tiny-dense"]).model)}))
    cfg = _cfg(tmp_path, ckpt)
    for name in ("pre", "ev", "ev_base"):
        _complete(cfg, name, started=f"{name}-t0")
    assert [a for *_, a in plan(cfg)] == ["skip", "skip", "skip"]
    assert json.loads((tmp_path / "run" / "ev" / "manifest.json").read_text())["init_stamp"] == "stage pre started pre-t0"

    # the init stage is to run again (its manifest deleted): the complete eval of it would be stale
    os.remove(tmp_path / "run" / "pre" / "manifest.json")
    with pytest.raises(ConfigError, match=r"pipeline.stages\[ev\]: stage is complete in .* but its init stage 'pre' "
                                          r"is to run now: its results would be those of the old checkpoint"):
        plan(cfg)
    # ... and once it ran again, the eval recorded another start of it
    _complete(cfg, "pre", started="pre-t1")
    with pytest.raises(ConfigError, match=r"stage is complete in .* but what it started from changed since "
                                          r"\(stage pre started pre-t0 -> stage pre started pre-t1\)"):
        plan(cfg)
    _complete(cfg, "ev")  # rerun: recorded against the new start
    assert [a for *_, a in plan(cfg)] == ["skip", "skip", "skip"]

    # a checkpoint path rewritten (the base model converted again)
    st = os.stat(meta)
    os.utime(meta, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(ConfigError, match=r"pipeline.stages\[ev_base\]: stage is complete .* what it started from "
                                          r"changed since"):
        plan(cfg)
    # manifests written before init_stamp existed are not refused
    m = json.loads((tmp_path / "run" / "ev_base" / "manifest.json").read_text())
    m.pop("init_stamp")
    (tmp_path / "run" / "ev_base" / "manifest.json").write_text(json.dumps(m))
    assert [a for *_, a in plan(cfg)] == ["skip", "skip", "skip"]
