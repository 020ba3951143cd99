"""`csr-inspect <run_dir> [--out DIR]`: a static site to look at what a CSR run did.

Layout of the site (default `<run_dir>/inspect/`), opened from the file system or any static server:
  index.html, prompt.html, eval.html, inspect.css, *.js    pages and code (package data, no CDN)
  data/run.js                 summary table, config, per-iteration statistics
  data/iter_<k>.js            the prompt list of iteration k (loaded when its tab opens)
  data/p/<key>.js             one prompt: its tree, pair and evaluation answers at every iteration
  data/eval_<evaluator>.js    every evaluation answer of one evaluator at every iteration
  img/                        the images shown (copied; larger than 512 px: a JPEG thumbnail)
Data files are scripts that call `CSR.put(name, data)`, not JSON: a page opened from file:// may load
scripts but not fetch() JSON. Each page loads only the files it shows, so a run with thousands of
prompts per iteration opens as fast as a small one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from csr.config.schema import RootConfig
from csr.core.errors import CSRError
from csr.core.io import atomic_write_json, read_json
from csr.data.images import load_image
from csr.data.prompts import resolve_image_path
from csr.eval.chair import caption_report
from csr.inspect import data
from csr.reward.rules import pair_rule
from csr.run.run_dir import read_saved_config

log = logging.getLogger(__name__)

MARKER = ".csr-inspect.json"  # in every site csr-inspect writes: the only directories it replaces
STATIC = ("index.html", "prompt.html", "eval.html", "inspect.css", "common.js", "index.js", "prompt.js", "eval.js")
THUMBNAIL = 512  # longest side of a copied image; larger ones are shrunk
DPO_NOTE = ("DPO logs batch means only (rewards/margins per step), not a reward margin per pair: "
            "the margin shown per pair is the pair rule's score margin (chosen score - rejected score).")


def _iterations(run_dir: Path) -> list[int]:
    ks = [int(p.name.removeprefix("iter_")) for p in run_dir.glob("iter_*") if p.name[5:].isdigit()]
    return sorted(ks)


def _config(run_dir: Path) -> Any:
    """The run's saved config, read as data (csr/run/run_dir.py refuses a Hydra section or unknown keys), over
    the schema's defaults: a run directory without its config reads as csr's defaults (csr/config/schema.py)."""
    path = run_dir / "config.yaml"
    return OmegaConf.merge(OmegaConf.structured(RootConfig), read_saved_config(path) if path.exists() else {})


def _truth(root: str | None, split: str | None) -> dict[str, set[str]] | None:
    """ShapesWorld ground truth of a split, when the run used one and its files are still there."""
    if root is None or split is None or not (Path(root) / split / "ground_truth.json").exists():
        return None
    from csr.worlds.shapesworld.splits import ground_truth

    return ground_truth(Path(root) / split)


def eval_image_root(cfg: Any, evaluator: str) -> str | None:
    """Where an evaluator read its images (as csr.eval's evaluators resolve them)."""
    e = cfg.eval
    if evaluator == "shapesworld":
        return str(Path(e.shapesworld.root) / e.shapesworld.split / "images") if e.shapesworld.root else None
    if evaluator == "coco_chair":
        return e.coco.image_root
    if evaluator == "pope":
        return e.pope.image_root
    return e.image_root or cfg.data.get("image_root")


class _Images:
    """Copies each source image once into img/ and returns its path relative to the site. Named by
    content, so two image roots holding the same file names (training and evaluation images) never
    share one; each is decoded as csr reads images (csr/data/images.py: allowed formats, upright RGB)
    and written as PNG, or a JPEG thumbnail when larger than THUMBNAIL."""

    def __init__(self, out: Path):
        self.dir, self.done = out / "img", {}
        self.dir.mkdir(parents=True, exist_ok=True)
        self.unreadable = 0  # images a run skipped (data.on_error=skip) or that changed since: not shown

    def add(self, root: str | None, rel: str) -> str | None:
        if root is None or not isinstance(rel, str):
            return None
        try:
            src = resolve_image_path(root, rel)
            if src in self.done:
                return self.done[src]
            image = load_image(root, rel)
            digest = hashlib.sha256(src.read_bytes()).hexdigest()[:32]
        except (CSRError, OSError) as err:
            log.warning("inspector: image %s not shown: %s", rel, err)
            self.unreadable += 1
            return None
        name = f"{digest}.png" if max(image.size) <= THUMBNAIL else f"{digest}.jpg"
        if not (self.dir / name).exists():
            if name.endswith(".png"):
                image.save(self.dir / name)
            else:
                image.thumbnail((THUMBNAIL, THUMBNAIL))
                image.save(self.dir / name, quality=85)
        self.done[src] = f"img/{name}"
        return self.done[src]


def _compact(obj: Any) -> Any:
    """Floats to 6 significant digits (what the pages show and more): the site is a third the size."""
    if isinstance(obj, float):
        return float(f"{obj:.6g}")
    if isinstance(obj, dict):
        return {k: _compact(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_compact(v) for v in obj]
    return obj


def _write_js(path: Path, name: str, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps(_compact(obj), ensure_ascii=False, separators=(",", ":"))
    path.write_text(f"CSR.put({json.dumps(name)},{body});\n", encoding="utf-8")


def _iteration_stats(iter_dir: Path) -> dict:
    metrics = read_json(iter_dir / "metrics.json") if (iter_dir / "metrics.json").exists() else {}
    pairs, dpo = metrics.get("pairs") or {}, metrics.get("dpo") or {}
    return {"pairs": {k: v for k, v in pairs.items() if k != "seconds"},
            "dpo": {k: v for k, v in dpo.items() if k.startswith(("rewards/", "loss", "steps"))},
            "search": {k: v for k, v in (metrics.get("search") or {}).items() if k != "seconds"}}


def _eval_item(record: dict, truth: dict[str, set[str]] | None, synonyms) -> dict:
    item = {"answer": record["answer"], "r_i": record.get("r_i"), "finish": record.get("finish")}
    if truth is not None and record["id"] in truth:
        item["halluc"] = caption_report(record["answer"], truth[record["id"]], synonyms)["hallucinated"]
    return item


def build(run_dir: Path, out: Path) -> dict:
    """Write the site's data and images into `out` (an empty directory); returns run.js's content."""
    cfg = _config(run_dir)
    reward, pairs_cfg, d, e = cfg.reward, cfg.pairs, cfg.data, cfg.eval
    settings = {"lam": reward.lam, "calibration": reward.calibration, "prune_by": cfg.search.prune_by,
                "lower_is_better": pair_rule(pairs_cfg.get("rule", "mean")).lower_is_better}
    filters = list(pairs_cfg.filters)
    truth = _truth(d.shapesworld.root, d.shapesworld.split)
    eval_truth = _truth(e.shapesworld.root, e.shapesworld.split)
    synonyms = None
    if truth is not None or eval_truth is not None:
        from csr.worlds.shapesworld.vocab import synonym_table

        synonyms = synonym_table()
    images = _Images(out)
    prompts: dict[str, dict] = {}  # prompt id -> its page's data
    evals: dict[str, dict[str, dict]] = {}  # evaluator -> id -> {image, prompt, answers: {k: item}}
    iterations = []
    for k in _iterations(run_dir):
        iter_dir = run_dir / f"iter_{k}"
        rows, details = data.iteration(iter_dir, settings, filters, truth, synonyms)
        if rows:
            _write_js(out / "data" / f"iter_{k}.js", f"iter_{k}", rows)
        for s in rows:
            page = prompts.setdefault(s["id"], {
                "id": s["id"], "key": data.prompt_key(s["id"]), "prompt": s["prompt"],
                "image": images.add(d.get("image_root"), s["image"]), "image_name": s["image"],
                "truth": sorted(truth[s["id"]]) if truth and s["id"] in truth else None,
                "iterations": {}, "evals": {}})
            page["iterations"][k] = details[s["id"]]
        for name, answers in data.eval_answers(iter_dir).items():
            gt = eval_truth if name == "shapesworld" else None
            root = eval_image_root(cfg, name)
            for a in answers:
                entry = evals.setdefault(name, {}).setdefault(a["id"], {
                    "id": a["id"], "prompt": a.get("prompt"), "image": images.add(root, a["image"]),
                    "truth": sorted(gt[a["id"]]) if gt and a["id"] in gt else None, "answers": {}})
                entry["answers"][k] = _eval_item(a, gt, synonyms)
        iterations.append({"k": k, "prompts": len(rows), **_iteration_stats(iter_dir)})
    for page in prompts.values():
        for name, items in evals.items():
            if page["id"] in items:
                page["evals"][name] = items[page["id"]]["answers"]
        _write_js(out / "data" / "p" / f"{page['key']}.js", f"p/{page['key']}", page)
    for name, items in evals.items():  # an evaluator's name is a directory name: its file gets a safe key
        _write_js(out / "data" / f"eval_{data.prompt_key(name)}.js", f"eval_{data.prompt_key(name)}", list(items.values()))
    summary = read_json(run_dir / "summary.json") if (run_dir / "summary.json").exists() else []
    if (run_dir / "summary.png").exists():
        shutil.copyfile(run_dir / "summary.png", out / "img" / "summary.png")
    run = {
        "run_dir": str(run_dir), "summary": summary, "summary_png": (run_dir / "summary.png").exists(),
        "iterations": iterations, "evaluators": sorted(evals), "eval_keys": {n: data.prompt_key(n) for n in evals},
        "ground_truth": truth is not None,
        "eval_ground_truth": eval_truth is not None, "dpo_note": DPO_NOTE,
        "config": {**settings, "model": cfg.model.get("path"), "filters": filters},
        # the selected iteration (csr/run/selection.py), recorded in run_info.json at the end of the run
        "selection": (read_json(run_dir / "run_info.json") if (run_dir / "run_info.json").exists() else {}).get("selection"),
    }
    _write_js(out / "data" / "run.js", "run", run)
    return run


def is_site(out: Path) -> bool:
    """Whether `out` is a site csr-inspect wrote: its marker, or (written before the marker) exactly the
    pages, data/ and img/ of one."""
    if (out / MARKER).is_file():
        return True
    names = {p.name for p in out.iterdir()}
    return set(STATIC) | {"data", "img"} == names and (out / "data" / "run.js").is_file()


def check_out(run_dir: Path, out: Path) -> None:
    """csr-inspect writes only into a new or empty directory or a site it wrote itself: it replaces the
    site whole, so anything else (the run, a user's folder, a project) is refused before it writes."""
    if out == run_dir or out in run_dir.parents:
        raise CSRError(f"--out {out} would replace the run directory {'itself' if out == run_dir else 'that holds it'}:"
                       " pass a new directory for the site (the default is <run_dir>/inspect)")
    if out.exists() and not out.is_dir():
        raise CSRError(f"--out {out} is a file, not a directory: pass a new directory for the site")
    if out.is_dir() and any(out.iterdir()) and not is_site(out):
        raise CSRError(f"--out {out} is not empty and is not a site csr-inspect wrote (no {MARKER}): csr-inspect "
                       "replaces its output whole, so it writes only into a new or empty directory or its own site;"
                       " pass another --out")
    existing = next((p for p in out.parents if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise CSRError(f"--out {out}: part of the path ({existing}) is a file, not a directory")


def write_site(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the inspector site of `run_dir` into `out` (default `<run_dir>/inspect`): a new or empty
    directory, or a site csr-inspect wrote before, which is replaced whole."""
    run_dir = Path(run_dir).resolve()
    out = Path(out).resolve() if out is not None else run_dir / "inspect"
    if not run_dir.is_dir():
        raise CSRError(f"{run_dir}: {'a file' if run_dir.exists() else 'no such directory'}; give a csr run directory")
    if not (run_dir / "iter_1").is_dir() and not (run_dir / "iter_0").is_dir():
        raise CSRError(f"{run_dir} holds no iter_<k>/ directory: not a csr run directory")
    check_out(run_dir, out)
    _config(run_dir)  # a saved config csr would refuse is refused before anything is written
    # Built beside its final place (a name of its own) and renamed, so a killed build never leaves half a site.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        static = resources.files("csr.inspect") / "static"
        for name in STATIC:
            (tmp / name).write_bytes((static / name).read_bytes())
        build(run_dir, tmp)
        atomic_write_json(tmp / MARKER, {"site_of": str(run_dir)})
        if out.exists():
            old = out.with_name(f".{out.name}.old-{tmp.name.rsplit('-', 1)[-1]}")
            out.rename(old)  # checked above: empty, or csr-inspect's own site
            try:
                tmp.rename(out)
            except OSError:
                old.rename(out)  # the earlier site stays where it was
                raise
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("inspector site written to %s (open %s)", out, out / "index.html")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="csr-inspect", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a csr run directory (holds config.yaml and iter_<k>/)")
    parser.add_argument("--out", default=None, help="where to write the site (default: <run_dir>/inspect)")
    args = parser.parse_args(argv)
    try:
        out = write_site(args.run_dir, args.out)
    except CSRError as err:
        raise SystemExit(f"csr-inspect: {err}") from None
    except OSError as err:  # a read-only run or output directory, a full disk
        where = Path(args.out) if args.out else Path(args.run_dir) / "inspect"
        kept = "an earlier site is kept" if where.exists() else "nothing was written"
        raise SystemExit(f"csr-inspect: cannot write the site {args.out or 'into <run_dir>/inspect'}: "
                         f"{err.strerror} ({err.filename}); {kept}: pass a writable --out") from None
    print(f"{out / 'index.html'}")
