"""Run `csr` with one fault planted: the process SIGKILLs itself (or sends itself a signal) at a chosen point.

    python tests/fault_inject.py FAULT [csr overrides ...]

FAULT is `[SIGNAL@]hook:target:n`: kill at the n-th time `hook` fires for `target` (a path fragment
such as `iter_1/search.jsonl`, or `iter_2/dpo` for a stage marker). With `SIGTERM@` or `SIGINT@`
the process sends itself that signal there instead and goes on: csr must stop at its next safe
point, print where and how to resume, and exit 128 + the signal's number. Hooks:

  record       before a JSONL record is appended (search / reward / eval part files)
  torn         after writing the first half of a JSONL record (a torn line on disk)
  replace      after a whole-file write reached its temp file, before the rename into place
  before_done  after a stage finished its outputs, before its `<stage>.done.json` is written
  after_done   right after the stage marker (the next stage has not started)
  dpo_step     at the start of DPO training step n (target: the iteration dir, e.g. `iter_1`)
  save_dir     after a model / adapter directory was saved to its temp dir, before the swap
  iteration    after an iteration's metrics.json (between iterations; target: `iter_k`)

The patches sit outside the package, so `csr` itself carries no test hooks. SIGKILL gives the
process no chance to clean up, as an OOM kill or a lost node would not; SIGTERM is what SLURM, Docker
and systemd send first, SIGINT a Ctrl+C.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

HOOKS = ("record", "torn", "replace", "before_done", "after_done", "dpo_step", "save_dir", "iteration")
SIGNALS = {"SIGKILL": signal.SIGKILL, "SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT}


def parse(spec: str) -> tuple[signal.Signals, str]:
    """`SIGTERM@record:iter_1/search.jsonl.part0:3` -> (SIGTERM, the hook spec); no prefix: SIGKILL."""
    name, _, rest = spec.rpartition("@")
    if name and name not in SIGNALS:
        raise SystemExit(f"unknown signal {name!r}; known: {list(SIGNALS)}")
    return SIGNALS[name or "SIGKILL"], rest


class Fault:
    def __init__(self, spec: str):
        self.signum, spec = parse(spec)
        hook, target, n = spec.rsplit(":", 2) if spec.count(":") >= 2 else (spec, "", "1")
        if hook not in HOOKS:
            raise SystemExit(f"unknown fault hook {hook!r}; known: {HOOKS}")
        if hook == "torn" and self.signum != signal.SIGKILL:
            raise SystemExit("a torn record needs SIGKILL: a process that goes on finishes the line")
        self.hook, self.target, self.n, self.seen = hook, target, int(n), 0
        self.iteration = ""  # the iteration running now, for hooks that see no path

    def fires(self, hook: str, where: str) -> bool:
        """Count an occurrence of `hook` at `where`; True on the n-th matching one."""
        if hook != self.hook or self.target not in where:
            return False
        self.seen += 1
        return self.seen == self.n

    def die(self) -> None:
        """SIGKILL ends the process here; SIGTERM / SIGINT run csr's handler, and the hooked call goes
        on unless the handler stops the run on the spot."""
        os.kill(os.getpid(), self.signum)


def install(fault: Fault) -> None:
    import csr.core.io
    import csr.dpo.lora
    import csr.loop
    import csr.merge.stage
    from csr.dpo.module import DPOModule

    write = csr.core.io.JsonlWriter.write

    def write_record(self, record):
        where = str(self.path)
        if fault.fires("record", where):
            fault.die()
        if fault.fires("torn", where):
            import json

            line = json.dumps(record) + "\n"
            self._fh.write(line[: len(line) // 2])
            self._fh.flush()
            os.fsync(self._fh.fileno())
            fault.die()
        write(self, record)

    csr.core.io.JsonlWriter.write = write_record

    replace = os.replace

    def replace_file(src, dst, *args, **kwargs):
        if fault.fires("replace", str(dst)):
            fault.die()
        return replace(src, dst, *args, **kwargs)

    os.replace = replace_file  # every whole-file write and directory swap in csr goes through it
    mark_done = csr.loop.mark_done

    def mark_stage_done(directory, stage, stats, made_from=None):
        where = f"{directory}/{stage}"
        if fault.fires("before_done", where):
            fault.die()
        mark_done(directory, stage, stats, made_from)
        if fault.fires("after_done", where):
            fault.die()

    csr.loop.mark_done = mark_stage_done
    training_step = DPOModule.training_step

    def step(self, batch, batch_idx):
        if fault.fires("dpo_step", fault.iteration):
            fault.die()
        return training_step(self, batch, batch_idx)

    DPOModule.training_step = step
    replace_dir = csr.core.io.replace_dir

    def swap_dir(tmp: Path, final: Path):
        if fault.fires("save_dir", str(final)):
            fault.die()
        replace_dir(tmp, final)

    csr.merge.stage.replace_dir = csr.dpo.lora.replace_dir = swap_dir  # the merged model's and the adapter's swap
    iteration = csr.loop.Loop.iteration

    def run_iteration(self, k, *args, **kwargs):
        fault.iteration = f"iter_{k}"  # what dpo_step's target matches
        metrics = iteration(self, k, *args, **kwargs)
        if fault.fires("iteration", f"iter_{k}"):
            fault.die()
        return metrics

    csr.loop.Loop.iteration = run_iteration


def main() -> None:
    fault = Fault(sys.argv[1])
    install(fault)
    from csr.cli import main as csr_main

    sys.argv = ["csr", *sys.argv[2:]]
    csr_main()


if __name__ == "__main__":
    main()
