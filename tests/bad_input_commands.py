"""Troubleshooting-table cases for each command's bad arguments (issue 28: "try each command with each
kind of bad argument"), and for inputs replaced at the same path between two starts (csr/run/inputs.py).
Merged into tests/test_bad_input.py's CASES. A command that answers through argparse (exit 2, its
message on stderr) is run whole, its message raised as the CSRError the table checks; each also
checks that the refused command wrote nothing."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from compose_config import compose_config
from safetensors.torch import load_file, save_file

from csr.cli import check_override_grammar
from csr.commands.compare_runs import runs_from_mlflow
from csr.commands.plan import check_args
from csr.commands.reproduce import stage_source
from csr.config.schema import validate
from csr.core.errors import CSRError
from csr.core.io import mark_done
from csr.eval.pope import pope_from_files
from csr.inspect.site import write_site
from csr.loop import Loop
from csr.models.tiny import main as make_tiny
from csr.run.inputs import made_from

if TYPE_CHECKING:
    from scratch_prompts import Ctx


def _argparse_refusal(main: Callable[[list[str]], object], argv: list[str]) -> None:
    """Run a command whose refusal is argparse's: exit 2 and one `prog: error: ...` line."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            main(argv)
        except SystemExit as exit_:
            assert exit_.code == 2, err.getvalue()
            raise CSRError(err.getvalue().strip().splitlines()[-1]) from None
    raise AssertionError(f"{argv} was accepted")


def _make_tiny(ctx: Ctx, *options: str) -> None:
    out = ctx.tmp / "tiny"
    try:
        _argparse_refusal(make_tiny, [*options, str(out)])
    finally:
        assert not out.exists()  # refused before anything is written


def _plan(gpu_gib: float) -> None:
    check_args(argparse.Namespace(gpu_gib=gpu_gib, prompt_tokens=64, answer_tokens=None))


def _pope_directory(ctx: Ctx) -> object:
    (ctx.tmp / "questions").mkdir()
    (ctx.tmp / "answers.jsonl").write_text('{"question_id": 1, "text": "yes"}\n')
    return pope_from_files(str(ctx.tmp / "questions"), str(ctx.tmp / "answers.jsonl"))


def _prompts_directory(ctx: Ctx) -> object:
    from csr.data.prompts import load_prompts

    (ctx.tmp / "prompts.json").mkdir()
    return load_prompts(str(ctx.tmp / "prompts.json"), str(ctx.images))


def _image_root_file(ctx: Ctx) -> object:
    from csr.data.prompts import load_prompts

    prompts = ctx.write([{"id": "two", "image": "good.png", "input": "Describe.\n<image>"}])
    return load_prompts(prompts, str(ctx.images / "good.png"), on_error=ctx.on_error)


def _clip_weights_directory(ctx: Ctx) -> object:
    from csr.models.clip import load_clip

    return load_clip(ctx.tiny.clip_arch, str(ctx.tmp), ctx.tiny.clip_config)


def _compare_store(ctx: Ctx, uri: str) -> object:
    (ctx.tmp / "garbage.db").write_bytes(bytes(range(256)) * 8)
    return runs_from_mlflow(uri.format(tmp=ctx.tmp), None, ["0123456789abcdef"])


def _reproduce(ctx: Ctx, source: str, uri: str = "sqlite:///{tmp}/mlflow.db") -> object:
    (ctx.tmp / "staging").mkdir()
    (ctx.tmp / "a file").write_text("mine")
    return stage_source(source.format(tmp=ctx.tmp), [], uri.format(tmp=ctx.tmp), ctx.tmp / "staging")


def _start(run: Path, model: Path, *overrides: str) -> Loop:
    loop = Loop(validate(compose_config(f"run_dir={run}", f"model.path={model}", *overrides)))
    with loop.open_run_dir():
        pass
    return loop


def _swapped_checkpoint(ctx: Ctx) -> object:
    """A run started on a checkpoint; another one (same names and shapes, other values) copied over it."""
    model = ctx.tmp / "model"
    shutil.copytree(ctx.tiny.llava, model)
    _start(ctx.tmp / "run", model)
    (weights,) = model.glob("*.safetensors")
    tensors = load_file(weights)
    save_file({name: t + 1 if t.is_floating_point() else t for name, t in tensors.items()}, weights,
              metadata={"format": "pt"})
    return _start(ctx.tmp / "run", model)


def _replaced_output(ctx: Ctx) -> object:
    """Iteration 1's search and reward done; search.jsonl then replaced by hand; the loop resumed."""
    run = ctx.tmp / "run"
    loop = _start(run, ctx.tmp / "absent-model")
    (run / "iter_1").mkdir()
    for stage, out in (("search", "search.jsonl"), ("reward", "rewards.jsonl")):
        sources = made_from(run, 1, stage)
        (run / "iter_1" / out).write_text(json.dumps({"id": "a"}) + "\n")
        mark_done(run / "iter_1", stage, {}, sources)
    (run / "iter_1" / "search.jsonl").write_text(json.dumps({"id": "b"}) + "\n")
    return loop.check_made_from(1, "reward")


CASES: dict[tuple[str, str], Callable[[Ctx], object]] = {
    ("csr-plan", "--gpu-gib nan or inf"): lambda ctx: (_plan(float("inf")), _plan(float("nan"))),
    ("csr-make-tiny", "--prompts 0, negative or enormous"): lambda ctx: _make_tiny(ctx, "--prompts", "0"),
    ("csr-make-tiny", "--seed negative or past 64 bits"): lambda ctx: _make_tiny(ctx, "--seed", str(2**70)),
    ("csr-pope", "a directory for the question or answer file"): _pope_directory,
    ("csr-compare --tracking-uri", "a scheme MLflow does not know (bogus://x)"):
        lambda ctx: _compare_store(ctx, "bogus://x"),
    ("csr-compare --tracking-uri", "a file that is not a database"):
        lambda ctx: _compare_store(ctx, "sqlite:///{tmp}/garbage.db"),
    ("csr-reproduce", "a path that does not exist, or a file"): lambda ctx: _reproduce(ctx, "{tmp}/no run"),
    ("csr-reproduce --tracking-uri", "no store there"): lambda ctx: _reproduce(ctx, "0123456789abcdef"),
    ("csr-inspect", "a path that does not exist, or a file"): lambda ctx: write_site(ctx.tmp / "no run"),
    ("model.path", "another checkpoint copied over it between two starts of a run"): _swapped_checkpoint,
    ("iteration output", "replaced by hand after the next stage was made from it"): _replaced_output,
    ("prompt file", "a directory"): _prompts_directory,
    ("data.image_root", "a file, not a directory"): _image_root_file,
    ("CLIP weights", "a directory"): _clip_weights_directory,
    ("run_dir", "non-ASCII letters, unquoted (run_dir=/runs/ünï)"):
        lambda ctx: check_override_grammar(["experiment=smoke", f"run_dir={ctx.tmp}/ünï"]),
}
