"""Search stage: prompts + the iteration's policy -> search.jsonl (one tree per prompt, resumable)."""

from __future__ import annotations

from pathlib import Path

from csr.core.distributed import is_global_zero
from csr.core.errors import CSRError
from csr.core.io import read_jsonl
from csr.data.image_hash import image_sha256
from csr.data.prompts import PromptRecord, load_prompts
from csr.models import memory as P
from csr.models.chat import drop_overlong
from csr.models.checkpoint import special_token_ids
from csr.models.families.base import Family
from csr.models.planning import lm_dims
from csr.reward.rules import pair_rule
from csr.run.context import StageContext
from csr.run.predict import predict_to_jsonl
from csr.search.decode import DecodeSettings
from csr.search.engine import SearchSettings
from csr.search.module import SearchModule


def delimiter_ids(tokenizer, delimiters: list[str]) -> frozenset[int]:
    """Vocabulary entries that are exactly a delimiter (e.g. '.'), possibly with surrounding space."""
    wanted = set(delimiters)
    return frozenset(i for i in range(len(tokenizer)) if tokenizer.decode([i]).strip() in wanted)


def kv_bytes_per_token(model) -> int:
    """Bytes of KV cache one token costs this model: every layer's keys and values, in its dtype."""
    return P.kv_bytes_per_token(lm_dims(model.config.get_text_config(), tied=False), model.dtype.itemsize)


def build_module(model, processor, family: Family, scorer, cfg) -> SearchModule:
    s, tok = cfg.search, processor.tokenizer
    end_ids = family.end_token_ids(processor, model)
    settings = SearchSettings(
        beam_width=s.beam_width, candidates_per_step=s.candidates_per_step, keep_top=s.keep_top,
        keep_bottom=s.keep_bottom, max_sentences=s.max_sentences, max_answer_tokens=s.max_answer_tokens,
        prune_by=s.prune_by, lam=cfg.reward.lam, calibration=cfg.reward.calibration,
        text_score=cfg.reward.text_score, max_batch_rows=s.max_batch_rows,
        max_batch_tokens=s.max_batch_tokens if s.max_batch_kv_gib is None else
        P.batch_token_cap(s.max_batch_tokens, s.max_batch_kv_gib, kv_bytes_per_token(model)),
        rule=pair_rule(cfg.pairs.rule, cfg.pairs.reference_clean),
    )
    d = s.decoding
    decode = DecodeSettings(
        strategy=d.strategy, end_ids=frozenset(end_ids), delimiter_ids=delimiter_ids(tok, list(s.delimiters)),
        suppress_ids=special_token_ids(processor, end_ids), max_new_tokens=s.max_new_tokens_per_sentence,
        diversity_penalty=d.diversity_penalty, temperature=d.temperature, top_p=d.top_p, top_k=d.top_k,
        compact_fraction=s.compact_fraction,
    )
    relevance = scorer.relevance if s.prune_by == "calibrated" else None
    module = SearchModule(model, processor, family, settings, decode, relevance, cfg.data.image_root, cfg.data.on_error, s.seed)
    if relevance is not None:
        module.clip = scorer  # a registered submodule: Lightning moves CLIP to the search's device
    return module


def run_search(*, model, processor, family: Family, scorer, cfg, out_path: Path, trainer_kwargs: dict) -> dict:
    prompts, load_skips = load_prompts(
        cfg.data.prompt_file, cfg.data.image_root, limit=cfg.data.limit,
        shuffle_seed=cfg.data.shuffle_seed, on_error=cfg.data.on_error,
    )
    prompts, too_long = drop_overlong(prompts, processor, model, family, cfg.data.image_root,
                                      cfg.search.max_answer_tokens, cfg.data.on_error, cfg.data.prompt_file)
    if too_long:
        load_skips = {**load_skips, "too_long": too_long}
    if is_global_zero():
        check_resumed(out_path, prompts, cfg.data.image_root, cfg.data.prompt_file)
    module = build_module(model, processor, family, scorer, cfg)
    predict_to_jsonl(module, prompts, out_path, batch_size=cfg.search.prompts_per_batch, trainer_kwargs=trainer_kwargs)
    return search_stats(read_jsonl(out_path), load_skips)


def check_resumed(out_path: Path, prompts: list[PromptRecord], image_root: str, prompt_file: str) -> None:
    """A resumed search goes on only with the prompts and images its written trees came from: a prompt
    file or an image edited at the same path would mix trees of two inputs in one iteration's pairs."""
    if not out_path.exists():
        return
    try:
        written = read_jsonl(out_path)
    except CSRError:
        return  # a torn last line, which the resume repairs: the records are checked at the next start
    current = {p.id: (p.image, p.raw) for p in prompts}
    changed = [r.get("id") for r in written if current.get(r.get("id")) != (r.get("image"), r.get("input"))]
    if changed:
        raise CSRError(f"{out_path}: {len(changed)} of the {len(written)} prompts searched so far are no longer in "
                       f"{prompt_file} as they were, or not among the prompts this start selects (e.g. id="
                       f"{changed[0]!r}): the prompt file (or data.limit) changed since this search started; restore "
                       f"it, or delete {out_path} to search again")
    moved = []
    for r in written:
        try:
            same = not r.get("image_sha256") or image_sha256(image_root, r["image"]) == r["image_sha256"]
        except (CSRError, OSError):
            same = False
        if not same:
            moved.append(r)
    if moved:
        raise CSRError(f"{out_path}: the images of {len(moved)} prompts searched so far changed on disk since the "
                       f"search read them (e.g. id={moved[0]['id']!r}, image {moved[0]['image']}): restore them, or "
                       f"delete {out_path} to search again")


def search_stats(records: list[dict], load_skips: dict[str, int]) -> dict:
    trees = [r for r in records if "skipped" not in r]
    sentences = [n for r in trees for n in r["nodes"][1:]]
    stats = {
        "prompts": len(records),
        "skipped": len(records) - len(trees) + sum(load_skips.values()),
        "nodes_expanded": sum(r["stats"]["nodes_expanded"] for r in trees),
        "sentences": len(sentences),
        "answers": sum(r["stats"]["answers"] for r in trees),
        "mean_r_t": sum(n["r_t"] for n in sentences) / len(sentences) if sentences else None,
    }
    scored = [n["r_i"] for n in sentences if n["r_i"] is not None]
    stats["mean_r_i"] = sum(scored) / len(scored) if scored else None
    stats.update({f"skipped/{k}": v for k, v in load_skips.items()})
    return stats


def run(ctx: StageContext) -> dict:
    """Search stage: the iteration's policy writes search.jsonl (sentence trees with their R_T)."""
    model, processor = ctx.policy(ctx.model_path)
    stats = run_search(model=model, processor=processor, family=ctx.family, scorer=ctx.scorer(), cfg=ctx.cfg,
                       out_path=ctx.iter_dir / "search.jsonl", trainer_kwargs=ctx.trainer_kwargs)
    return {**stats, "model_path": ctx.model_path}
