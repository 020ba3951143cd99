"""The config schema: one dataclass per `conf/<group>/`, each field a knob with its default.

Every default is written here once: conf/config.yaml composes this schema's defaults first (the
`schema` config registered below) and each file in conf/ sets only what differs. Hydra composes the
YAML files; `validate()` merges the result into this schema, so an unknown key or a wrong type fails
at start with the key's full name, and then checks value ranges.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, OmegaConfBaseException

from csr.config.choices import (
    ACCELERATORS,
    ATTN_IMPLEMENTATIONS,
    CALIBRATIONS,
    CHAIR_VARIANTS,
    DECODING_STRATEGIES,
    DPO_LOSSES,
    DPO_REFERENCES,
    DTYPES,
    FAMILIES,
    HARNESS_ON_FAILURE,
    HARNESS_RESULTS,
    IPO_FORMS,
    ON_ERROR,
    PAIR_FILTERS,
    PAIR_RULES,
    POPE_PARSERS,
    PRECISIONS,
    PRUNE_BY,
    REFERENCE_CLEANS,
    SCHEDULERS,
    SELECT_MODES,
    SHAPESWORLD_SPLITS,
    TEXT_SCORES,
)
from csr.config.held_out import check_selection
from csr.core.errors import CSRError
from csr.core.tracking import sqlite_uri

# logger.tracking_uri: the MLflow stores csr can open (a typo'd scheme would fail deep inside MLflow)
TRACKING_SCHEMES = ("sqlite:///", "http://", "https://", "file:", "databricks", "postgresql", "mysql", "mssql")
ASSETS = Path(__file__).resolve().parent.parent / "assets"
# ${asset:shapesworld/llava} -> the shipped checkpoint inside the package, wherever csr runs from.
OmegaConf.register_new_resolver("asset", lambda name: str(ASSETS / name), replace=True)
# ${sqlite_uri:/some/dir/mlflow.db} -> a sqlite URI with '%' and '?' escaped (a cwd may contain them).
OmegaConf.register_new_resolver("sqlite_uri", lambda path: sqlite_uri(Path(path)), replace=True)


class Stage(StrEnum):
    all = "all"
    search = "search"
    reward = "reward"
    pairs = "pairs"
    dpo = "dpo"
    merge = "merge"
    eval = "eval"



@dataclass
class ModelConfig:
    name: str = "tiny_random"
    path: str = "???"  # local HF checkpoint directory or a model name already in the HF cache
    family: str = "llava"  # one of FAMILIES: the adapter in csr/models/families/ that knows this checkpoint's shape
    dtype: str = "float32"  # one of DTYPES
    attn_implementation: str | None = "sdpa"  # eager | sdpa | flash_attention_2 | null (library default)


@dataclass
class ClipConfig:
    arch: str = "ViT-L-14-336"  # open_clip architecture name
    weights: str | None = MISSING  # local weights file (safetensors), or "random" (random init: tests only); null is refused
    config_json: str | None = None  # JSON of a custom architecture, registered before loading


@dataclass
class RewardConfig:
    lam: float = 0.9  # weight of R_I (image relevance) against R_T (self-reward)
    calibration: str = "rank"  # one of CALIBRATIONS
    text_score: str = "mean_logprob"  # form of R_T: one of TEXT_SCORES
    clip: ClipConfig = field(default_factory=ClipConfig)
    batch_size: int = 64  # sentences per CLIP text batch


@dataclass
class DecodingConfig:
    # How the K candidates of one node are made distinct. `diverse_greedy` is the reference's group
    # beam search with one beam per group (Hamming diversity penalty, deterministic); `sample` draws.
    strategy: str = "diverse_greedy"  # one of DECODING_STRATEGIES
    diversity_penalty: float = 3.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off


@dataclass
class SearchConfig:
    beam_width: int = 5  # prune only when a step has at least this many non-final children
    candidates_per_step: int = 5  # K sentences proposed per live node
    keep_top: int = 1
    keep_bottom: int = 2
    max_new_tokens_per_sentence: int = 70
    max_sentences: int = 8
    max_answer_tokens: int = 256  # answer tokens only, never prompt or image tokens
    prune_by: str = "calibrated"  # one of PRUNE_BY
    delimiters: list[str] = field(default_factory=lambda: ["."])
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    prompts_per_batch: int = 4  # prompts searched together (their nodes decode in one batch)
    max_batch_rows: int = 64  # cap on rows decoded at once, bounds memory on long answers
    # cap on the KV-cache tokens a decode batch holds besides the shared prompt prefixes (one per
    # prompt): rows x (answer so far + one sentence); bounds memory on long answers
    max_batch_tokens: int = 65536
    # cap on the same KV cache in GiB (null = none): lowers max_batch_tokens to what it holds at the
    # model's bytes per token (57 KB at Qwen2.5-VL-7B, 524 KB at LLaVA-1.5-7B in bf16), so one value
    # means the same memory for every family
    max_batch_kv_gib: float | None = None
    # finished rows leave a decode batch (a copy of every layer's cache) once they are this share of its
    # rows; until then they only cost their share of the batch's compute (0 = as soon as one finishes)
    compact_fraction: float = 0.25
    seed: int = 0


@dataclass
class ShapesWorldDataConfig:
    # ShapesWorld (csr/worlds/shapesworld/) writes its prompt split on first use: root/<split>/{prompts.json, images/}
    root: str | None = None
    split: str | None = None  # csr | val | test | fresh (SHAPESWORLD_SPLITS); null = no world (the prompt file already exists)
    size: int = 1000


@dataclass
class DataConfig:
    prompt_file: str = "???"  # JSON list of {"id", "image", "input"} (the reference format)
    image_root: str = "???"
    limit: int | None = None  # prompts per iteration
    shuffle_seed: int | None = None  # null = file order
    on_error: str = "raise"  # one of ON_ERROR
    shapesworld: ShapesWorldDataConfig = field(default_factory=ShapesWorldDataConfig)


@dataclass
class PairsConfig:
    # How an answer is scored: `mean` = mean calibrated R over its sentences (csr's rule);
    # `reference` = the authors' construct.py (ranks per sibling set, lower is better, / (sentences + 1)).
    rule: str = "mean"  # one of PAIR_RULES
    # What `reference` drops before ranking (csr/reward/rules/clean.py): `clean_tree` = the authors' score.py
    # (their clean_tree, then sentences under 4 characters); `short` = sentences under 4 characters alone.
    reference_clean: str = "clean_tree"  # one of REFERENCE_CLEANS
    filters: list[str] = field(default_factory=lambda: ["empty", "repetition"])  # some of PAIR_FILTERS
    export_llava: bool = True  # pairs_llava.json, the reference code's conversation layout
    export_trl: bool = True  # pairs_trl.jsonl, TRL DPOTrainer's prompt/chosen/rejected/images


@dataclass
class LoraConfig:
    r: int = 128
    alpha: int = 256
    dropout: float = 0.05
    # A regex over module names; null: the family's (every linear layer of its language model; lm_head,
    # the vision tower and the projector excluded).
    target_modules: str | None = None


@dataclass
class DPOConfig:
    loss: str = "sigmoid"  # one of DPO_LOSSES
    beta: float = 0.1
    ipo_form: str = "mean"  # one of IPO_FORMS
    label_smoothing: float = 0.0  # sigmoid: cDPO (TRL 1.16's sigmoid ignores it); robust: label noise rate
    lr: float = 1.0e-7
    scheduler: str = "cosine"  # one of SCHEDULERS
    warmup_ratio: float = 0.03
    epochs: int = 1
    batch_size: int = 1  # pairs per micro-batch
    grad_accumulation: int = 1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lora: LoraConfig = field(default_factory=LoraConfig)
    train_projector: bool = False
    reference: str = "precomputed"  # one of DPO_REFERENCES
    gradient_checkpointing: bool = False  # recompute layer activations in backward: less memory, more time
    seed: int = 0


@dataclass
class TrainerConfig:
    accelerator: str = "cpu"  # cpu | gpu | auto
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | deepspeed (DPO's; search, reward and eval use ddp when devices > 1)
    precision: str = "32-true"  # 32-true | bf16-mixed | bf16-true | 16-mixed
    deterministic: bool = True
    log_every_n_steps: int = 1
    deepspeed: dict | None = None  # DeepSpeed JSON config for strategy=deepspeed (conf/trainer/deepspeed_*)


@dataclass
class CocoEvalConfig:
    instances: str | None = None  # instances_val2014.json (the images described; ground truth)
    captions: str | None = None  # captions_val2014.json
    image_root: str | None = None  # val2014/
    # More files read for ground truth only, as one with the two above: chair.py reads both splits
    # (instances_train2014.json / captions_train2014.json); needed when generated ids are train images.
    extra_instances: list[str] = field(default_factory=list)
    extra_captions: list[str] = field(default_factory=list)


@dataclass
class ChairEvalConfig:
    # original = LisaAnne/Hallucination chair.py as the literature runs it (quirks included);
    # fixed = csr's corrections (docs/fidelity.md table). COCO only: ShapesWorld has its own exact vocabulary.
    variant: str = "original"  # one of CHAIR_VARIANTS


@dataclass
class PopeEvalConfig:
    questions: str | None = None  # e.g. coco_pope_adversarial.json (JSONL: question_id, image, text, label)
    image_root: str | None = None
    # official = POPE's evaluate.py rule (first sentence, commas dropped, split on spaces, No/no/not);
    # robust = any punctuation separates words, case ignored. Applies to every POPE answer.
    parser: str = "official"  # one of POPE_PARSERS


@dataclass
class ShapesWorldEvalConfig:
    root: str | None = None  # where its held-out splits are written (on first use)
    split: str = "test"  # held-out split: val to tune, test to report, fresh (unused seeds) to confirm
    pope_images: int = 200  # images probed with POPE questions


@dataclass
class SelectConfig:
    # Which iteration the run keeps (csr/run/selection.py): each evaluated model is also scored on a held-out
    # selection split, never the reported one, and the best by `metric` is selected; `iterations` is the most.
    metric: str = "???"  # "<evaluator>/<key>" of eval.evaluators, e.g. shapesworld/chair_s
    mode: str = "min"  # one of SELECT_MODES
    split: str = "val"  # the selection split (the evaluator's held-out splits); not eval's, not the training one
    patience: int | None = None  # stop once this many iterations in a row have not beaten the best; null = never
    # eval keys the selection's evaluation sets otherwise than the reported one's, e.g. {shapesworld:
    # {pope_images: 0}}: selecting on CHAIR_S needs no POPE answers
    overrides: dict = field(default_factory=dict)


@dataclass
class HarnessEvalConfig:
    # An external benchmark harness run on each evaluated checkpoint (csr/eval/harness.py); presets in
    # conf/eval/harness/, the recipe in docs/benchmarks.md. Checked at start when eval.evaluators names it.
    executable: str | None = None  # the harness's program (a path, or a name on PATH)
    # argv after the executable, run without a shell; placeholders {checkpoint} {output_dir} {tasks}
    # {config_file} {device} {dtype} (csr/eval/harness.py PLACEHOLDERS)
    args: list[str] = field(default_factory=list)
    extra_args: list[str] = field(default_factory=list)  # appended to args (e.g. lmms-eval's --include_path DIR)
    tasks: list[str] = field(default_factory=list)  # the harness's task (dataset) names; each must have results
    results: str = "lmms_eval"  # the results files' format: one of HARNESS_RESULTS
    env: dict[str, str] = field(default_factory=dict)  # added to the harness's environment (values take placeholders)
    config_file: dict | None = None  # written as JSON for {config_file} (its strings take placeholders)
    iterations: list[int] | None = None  # which iterations' checkpoints (0 = the base model); null = every one
    # true: only the checkpoint the run selects (eval.select), run once at the end of the run after the choice
    only_selected: bool = False
    on_failure: str = "raise"  # one of HARNESS_ON_FAILURE: raise stops the run (the others' metrics written first)
    summary: list[str] = field(default_factory=list)  # "<task>/<metric>" keys the run's summary table shows


@dataclass
class EvalConfig:
    evaluators: list[str] = field(default_factory=lambda: ["generate"])  # names in csr.worlds.evaluators()
    shapesworld: ShapesWorldEvalConfig = field(default_factory=ShapesWorldEvalConfig)  # shapesworld evaluator
    coco: CocoEvalConfig = field(default_factory=CocoEvalConfig)  # coco_chair evaluator
    chair: ChairEvalConfig = field(default_factory=ChairEvalConfig)  # coco_chair evaluator
    pope: PopeEvalConfig = field(default_factory=PopeEvalConfig)  # pope evaluator
    lmms_eval: HarnessEvalConfig = field(default_factory=HarnessEvalConfig)  # lmms_eval evaluator
    vlmevalkit: HarnessEvalConfig = field(default_factory=HarnessEvalConfig)  # vlmevalkit evaluator
    prompt_file: str | None = None  # null = the training prompt file
    image_root: str | None = None  # null = data.image_root
    limit: int | None = 16
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy; > 0 = sampled at this temperature, no top-k or top-p cut
    sample_seed: int = 0  # with temperature > 0: the answers' seed (with each batch's record ids)
    batch_size: int = 8
    at_base: bool = True  # also evaluate the starting model (iteration 0)
    select: SelectConfig | None = None  # which iteration to keep (csr/run/selection.py); null: none, every iteration runs


@dataclass
class LoggerConfig:
    enabled: bool = True
    tracking_uri: str | None = None  # null = sqlite file mlflow.db in the run directory
    experiment_name: str = "csr"
    run_name: str | None = None


@dataclass
class ResumeConfig:
    # Keys (as `reward.lam`) that a resume of an existing run_dir may change; any other
    # result-relevant change is refused. Each accepted change is recorded (config.<n>.yaml,
    # config_changes.json), logged to MLflow and replayed by csr-reproduce. See csr/run/run_dir.py.
    allow_changes: list[str] = field(default_factory=list)


@dataclass
class ReportConfig:
    # Write the inspector site (`csr-inspect`: trees, pairs, answers) to <run_dir>/inspect at the end
    # of a run and log it to the MLflow parent run.
    inspect: bool = True


@dataclass
class RootConfig:
    iterations: int = 3
    stage: Stage = Stage.all  # run the whole loop, or one stage of one `iteration` on `run_dir`
    iteration: int | None = None  # for a single stage; null = the first unfinished iteration
    run_dir: str = "???"  # output directory of the run (Hydra's by default); reuse it to resume
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    data: DataConfig = field(default_factory=DataConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    resume: ResumeConfig = field(default_factory=ResumeConfig)


# The first default of conf/config.yaml: every key with its default above, under which Hydra merges the
# groups' files. Stored as plain data, not as the dataclass, so that Hydra composes an untyped config as
# before and validate() names a wrong type or value in csr's own words.
ConfigStore.instance().store(name="schema", node=OmegaConf.to_container(OmegaConf.structured(RootConfig),
                                                                        enum_to_str=True))


_CHOICES = {
    "model.dtype": DTYPES,
    "model.family": FAMILIES,
    "reward.calibration": CALIBRATIONS,
    "reward.text_score": TEXT_SCORES,
    "search.prune_by": PRUNE_BY,
    "search.decoding.strategy": DECODING_STRATEGIES,
    "data.on_error": ON_ERROR,
    "pairs.rule": PAIR_RULES,
    "pairs.reference_clean": REFERENCE_CLEANS,
    "dpo.ipo_form": IPO_FORMS,
    "eval.chair.variant": CHAIR_VARIANTS,
    "eval.pope.parser": POPE_PARSERS,
    "eval.lmms_eval.results": HARNESS_RESULTS,
    "eval.lmms_eval.on_failure": HARNESS_ON_FAILURE,
    "eval.vlmevalkit.results": HARNESS_RESULTS,
    "eval.vlmevalkit.on_failure": HARNESS_ON_FAILURE,
    "dpo.loss": DPO_LOSSES,
    "dpo.scheduler": SCHEDULERS,
    "dpo.reference": DPO_REFERENCES,
    "data.shapesworld.split": (*SHAPESWORLD_SPLITS, None),
    "eval.shapesworld.split": SHAPESWORLD_SPLITS,
    "eval.select.mode": SELECT_MODES,
    "trainer.precision": PRECISIONS,
    "trainer.accelerator": ACCELERATORS,
    "model.attn_implementation": ATTN_IMPLEMENTATIONS,
}

# key -> (predicate, what must hold)
_RANGES = {
    "iterations": (lambda v: v >= 1, ">= 1"),
    "reward.lam": (lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
    "reward.batch_size": (lambda v: v >= 1, ">= 1"),
    "reward.clip.weights": (lambda v: v is not None, "a local weights file (or 'random': a random-init CLIP, tests only)"),
    "search.beam_width": (lambda v: v >= 1, ">= 1"),
    "search.candidates_per_step": (lambda v: v >= 1, ">= 1"),
    "search.keep_top": (lambda v: v >= 0, ">= 0"),
    "search.keep_bottom": (lambda v: v >= 0, ">= 0"),
    "search.max_new_tokens_per_sentence": (lambda v: v >= 1, ">= 1"),
    "search.max_sentences": (lambda v: v >= 1, ">= 1"),
    "search.max_answer_tokens": (lambda v: v >= 1, ">= 1"),
    "search.prompts_per_batch": (lambda v: v >= 1, ">= 1"),
    "search.max_batch_rows": (lambda v: v >= 1, ">= 1"),
    "search.max_batch_tokens": (lambda v: v >= 1, ">= 1"),
    "search.max_batch_kv_gib": (lambda v: v is None or v > 0, "> 0 or null (no byte cap)"),
    "search.compact_fraction": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "search.decoding.temperature": (lambda v: v > 0, "> 0"),
    "search.decoding.top_p": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "dpo.beta": (lambda v: v > 0, "> 0"),
    "dpo.lr": (lambda v: v > 0, "> 0"),
    "dpo.warmup_ratio": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "dpo.label_smoothing": (lambda v: 0 <= v < 0.5, "in [0, 0.5)"),
    "dpo.epochs": (lambda v: v >= 1, ">= 1"),
    "dpo.batch_size": (lambda v: v >= 1, ">= 1"),
    "dpo.grad_accumulation": (lambda v: v >= 1, ">= 1"),
    "dpo.lora.r": (lambda v: v >= 1, ">= 1"),
    "dpo.lora.alpha": (lambda v: v >= 1, ">= 1"),
    "dpo.lora.dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "search.decoding.top_k": (lambda v: v >= 0, ">= 0 (0 = off)"),
    "search.decoding.diversity_penalty": (lambda v: v >= 0, ">= 0"),
    "iteration": (lambda v: v is None or v >= 0, ">= 0 (0 = the starting model's evaluation) or null"),
    "seed": (lambda v: v >= 0, ">= 0"),
    "search.seed": (lambda v: v >= 0, ">= 0"),
    "dpo.seed": (lambda v: v >= 0, ">= 0"),
    "dpo.max_grad_norm": (lambda v: v >= 0, ">= 0 (0 = no clipping)"),
    "data.limit": (lambda v: v is None or v >= 1, ">= 1 or null (every prompt)"),
    "eval.limit": (lambda v: v is None or v >= 1, ">= 1 or null (every prompt)"),
    "eval.batch_size": (lambda v: v >= 1, ">= 1"),
    "eval.max_new_tokens": (lambda v: v >= 1, ">= 1"),
    "eval.temperature": (lambda v: v >= 0, ">= 0 (0 = greedy)"),
    "trainer.devices": (lambda v: v >= 1 or v == -1, ">= 1, or -1 (every visible GPU)"),
    "trainer.num_nodes": (lambda v: v >= 1, ">= 1"),
    "eval.shapesworld.pope_images": (lambda v: v >= 0, ">= 0 (0 = no POPE)"),
}


def validate(cfg: DictConfig) -> DictConfig:
    """Type-check `cfg` against the schema and check value ranges; return the typed config."""
    try:
        typed = OmegaConf.merge(OmegaConf.structured(RootConfig), cfg)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        reason = str(err.msg if hasattr(err, "msg") else err).splitlines()[0]  # OmegaConf appends full_key, types
        raise CSRError(f"config key {key!r}: {reason}") from None
    try:  # every interpolation now, naming its key: an unset ${oc.env:VAR} would fail somewhere later
        OmegaConf.to_container(typed, resolve=True)
    except InterpolationResolutionError as err:
        # ${hydra:...} resolves only inside the `csr` app; compose() without Hydra's config (tests, tools) skips this
        if "HydraConfig was not set" not in str(err):
            reason = str(err.__cause__ or err.msg).split("\n")[0].split("resolving interpolation: ")[-1].strip('"')
            raise CSRError(f"config key {err.full_key!r}: cannot resolve its value: {reason} "
                           "(set the variable, or the key on the command line)") from None
    # Checked on the composed config too: merging never lets a ??? replace the schema's default.
    missing = sorted((OmegaConf.missing_keys(cfg) | OmegaConf.missing_keys(typed)) - {"run_dir"})
    if missing:
        raise CSRError(f"config keys {missing} have no value (???): set them on the command line, e.g. {missing[0]}=...")
    for key, choices in _CHOICES.items():
        value = OmegaConf.select(typed, key)
        if value is None and OmegaConf.select(typed, key.rpartition(".")[0]) is None:
            continue  # an optional block left out (eval.select=null): nothing to choose
        if value not in choices:
            raise CSRError(f"config key {key!r}: {value!r} is not one of {list(choices)}")
    for key, (ok, rule) in _RANGES.items():
        value = OmegaConf.select(typed, key)
        if not ok(value):
            raise CSRError(f"config key {key!r}: {value!r} must be {rule}")
    search = typed.search
    if search.keep_top + search.keep_bottom == 0:
        raise CSRError("config keys 'search.keep_top' + 'search.keep_bottom' are both 0: the first pruning would "
                       "keep no sentence and the run would train on nothing; keep at least one (e.g. search.keep_top=1)")
    uri = typed.logger.tracking_uri
    if typed.logger.enabled and uri and not uri.startswith(TRACKING_SCHEMES):
        raise CSRError(f"config key 'logger.tracking_uri': {uri!r} is not an MLflow store csr can use (one of "
                       f"{', '.join(s + '...' for s in TRACKING_SCHEMES)}), or null for a store in the run directory")
    if search.keep_top + search.keep_bottom > search.beam_width:
        raise CSRError(
            f"config keys 'search.keep_top' + 'search.keep_bottom' ({search.keep_top} + {search.keep_bottom})"
            f" must not exceed 'search.beam_width' ({search.beam_width})"
        )
    if typed.iteration == 0 and typed.stage not in (Stage.all, Stage.eval):
        raise CSRError(f"config key 'iteration': iteration 0 is the starting model's evaluation; stage={typed.stage}"
                       " runs in iterations >= 1")
    if typed.dpo.train_projector and typed.dpo.reference == "adapter_disabled":
        raise CSRError(
            "config key 'dpo.reference': adapter_disabled cannot be the reference when"
            " dpo.train_projector=true (the trained projector would move the reference too); use frozen_copy"
        )
    for name in typed.pairs.filters:
        if name not in PAIR_FILTERS:
            raise CSRError(f"config key 'pairs.filters': unknown filter {name!r}")
    check_selection(typed)
    if typed.eval.select is not None:
        try:  # the selection's eval keys are eval's own
            OmegaConf.merge(OmegaConf.structured(EvalConfig), typed.eval.select.overrides)
        except OmegaConfBaseException as err:
            raise CSRError(f"config key 'eval.select.overrides': {err.msg if hasattr(err, 'msg') else err}") from None
    return typed
