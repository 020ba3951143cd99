"""Every choice list of the config, here only: `validate()` (csr/config/schema.py) checks each key against its
list at start, the modules that implement the choices import them, and the YAML files, the schema and
the docs point here. A pure module (no imports), so that the pure math can import it too."""

DTYPES = ("float32", "bfloat16", "float16")  # model.dtype
# model.family -> "<module>:<Class>" of its adapter under csr/models/families/. The one table of families: its
# names are the choice list (validate(), csr-make-tiny --family), and the registry there (get_family) imports a
# family's class from here on first use, so the config is checked before any model library loads.
FAMILIES = {
    "llava": "llava:Llava",
    "llava_next": "llava_next:LlavaNext",
    "llava_onevision": "llava_next:LlavaOneVision",
    "qwen2_vl": "qwen_vl:Qwen2VL",
    "qwen2_5_vl": "qwen_vl:Qwen25VL",
    "qwen3_vl": "qwen_vl:Qwen3VL",
    "idefics3": "idefics3:Idefics3",
    "smolvlm": "idefics3:SmolVLM",
    "gemma3": "gemma3:Gemma3",
}
CALIBRATIONS = ("rank", "zscore", "raw")  # reward.calibration: how R_T and R_I are put on one scale per sibling set
TEXT_SCORES = ("mean_logprob", "sum_logprob", "prob")  # reward.text_score: the form of R_T
DECODING_STRATEGIES = ("diverse_greedy", "sample")  # diverse_greedy: the reference's group beam search, 1 beam/group
PRUNE_BY = ("calibrated", "lm")  # calibrated: the paper's running calibrated reward; lm: R_T (the reference code)
ON_ERROR = ("raise", "skip")  # data.on_error: a bad record raises naming it, or is counted and skipped
PAIR_RULES = ("mean", "reference")  # mean: csr's mean calibrated R; reference: the authors' construct.py ranks
PAIR_FILTERS = ("empty", "repetition", "non_latin")  # the reference code's clean-up of candidate answers
# pairs.reference_clean: what the reference rule drops before ranking (csr/reward/rules/clean.py): clean_tree = the
# authors' score.py (clean_tree, then sentences under 4 characters); short = sentences under 4 characters alone
REFERENCE_CLEANS = ("clean_tree", "short")
DPO_LOSSES = ("sigmoid", "ipo", "hinge", "robust")
IPO_FORMS = ("mean", "sum")  # ipo only: mean = log-ratios / completion length (TRL 1.16); sum
SCHEDULERS = ("cosine", "constant")
DPO_REFERENCES = ("precomputed", "adapter_disabled", "frozen_copy")  # how the frozen reference's log-probs are had
CHAIR_VARIANTS = ("original", "fixed")  # original: chair.py as papers ran it; fixed: csr's corrections
POPE_PARSERS = ("official", "robust")  # official: POPE's evaluate.py; robust: csr's reading of the first words
# data.shapesworld.split (or null: no world) and eval.shapesworld.split: csr/worlds/shapesworld/splits.py SPLIT_SEEDS
SHAPESWORLD_SPLITS = ("csr", "val", "test", "fresh")
SELECT_MODES = ("min", "max")  # select.mode: is the selection metric better lower (CHAIR) or higher (recall, F1)

# trainer.precision: Lightning's names csr runs under (docs/scale-out.md); trainer.accelerator: cpu,
# or gpu / cuda (NVIDIA), or auto; model.attn_implementation: transformers' kernels, null = its default.
PRECISIONS = ("32-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true")
ACCELERATORS = ("cpu", "gpu", "cuda", "auto")
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention", None)
# eval.<harness>.results: the results files' format (csr/eval/harness_results.py); .on_failure: raise = stop the
# run once the other evaluators' metrics are written, record = failed=1 and go on (csr/eval/harness.py)
HARNESS_RESULTS = ("lmms_eval", "vlmevalkit")
HARNESS_ON_FAILURE = ("raise", "record")
