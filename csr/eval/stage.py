"""Eval stage: every evaluator of `eval.evaluators` scores the model iteration k produced (k = 0: the
base model), each into iter_<k>/eval/<name>/; its metrics are namespaced `<name>/<key>`."""

from __future__ import annotations

from csr import progress
from csr.context import StageContext


def run(ctx: StageContext) -> dict:
    model, processor = ctx.policy(ctx.evaluated_path)
    e, data = ctx.cfg.eval, ctx.cfg.data
    metrics = {}
    for name in e.evaluators:  # names checked at start (csr/cli.py check_config)
        out = ctx.iter_dir / "eval" / name
        out.mkdir(parents=True, exist_ok=True)
        with progress.stage(name):
            result = ctx.evaluators[name].run(
                model=model, processor=processor, scorer=ctx.scorer(), eval_cfg=e,
                prompt_file=e.prompt_file or data.prompt_file, image_root=e.image_root or data.image_root,
                out_dir=out, trainer_kwargs=ctx.trainer_kwargs, on_error=data.on_error,
            )
        metrics.update({f"{name}/{key}": v for key, v in result.items()})
    return metrics
