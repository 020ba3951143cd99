"""Eval stage: every evaluator of `eval.evaluators` scores the model iteration k produced (k = 0: the
base model), each into iter_<k>/eval/<name>/; its metrics are namespaced `<name>/<key>`.

An external harness that fails (csr/eval/harness.py HarnessFailed, with eval.<name>.on_failure=raise)
does not stop the others: they run, their metrics are written to iter_<k>/eval/partial_metrics.json,
and then the stage fails with the harness's error. Rerunning the same command resumes it."""

from __future__ import annotations

from csr.core import progress
from csr.core.io import atomic_write_json
from csr.eval.harness import HarnessFailed
from csr.run.context import StageContext

PARTIAL = "partial_metrics.json"  # the other evaluators' metrics when a harness failed


def run(ctx: StageContext) -> dict:
    model, processor = ctx.policy(ctx.evaluated_path)
    e, data = ctx.cfg.eval, ctx.cfg.data
    metrics, failed = {}, []
    for name in e.evaluators:  # names checked at start (csr/cli.py check_config)
        out = ctx.iter_dir / "eval" / name
        out.mkdir(parents=True, exist_ok=True)
        try:
            with progress.stage(name):
                result = ctx.evaluators[name].run(
                    model=model, processor=processor, family=ctx.family, scorer=ctx.scorer(), eval_cfg=e,
                    prompt_file=e.prompt_file or data.prompt_file, image_root=e.image_root or data.image_root,
                    out_dir=out, trainer_kwargs=ctx.trainer_kwargs, on_error=data.on_error,
                )
        except HarnessFailed as err:
            failed.append(str(err))
            continue
        metrics.update({f"{name}/{key}": v for key, v in result.items()})
    partial = ctx.iter_dir / "eval" / PARTIAL
    if failed:
        atomic_write_json(partial, metrics)
        raise HarnessFailed("\n".join(failed) + f"\nThe other evaluators' metrics are written to {partial}; "
                            "rerun the same command to run the harness again (the run resumes here)")
    partial.unlink(missing_ok=True)
    return metrics
