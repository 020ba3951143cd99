"""The real Hydra config in conf/: it composes, carries the paper's defaults, and validate() names bad keys."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from compose_config import PATHS, RUN, compose_config
from omegaconf import DictConfig, OmegaConf, open_dict

from csr.cli import CONF_DIR
from csr.config.schema import Stage, validate
from csr.core.errors import CSRError


def _fully_resolved(cfg: DictConfig) -> dict:
    """Every interpolation resolves and no ??? is left."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


def _names(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def test_conf_dir_is_the_repository_conf() -> None:
    assert (Path(CONF_DIR) / "config.yaml").is_file()


def test_defaults_are_shapesworld() -> None:
    typed = validate(compose_config(paths=[*RUN, "data.shapesworld.root=/sw", "eval.shapesworld.root=/sw"]))
    assert (typed.model.name, typed.data.shapesworld.split, list(typed.eval.evaluators)) == (
        "shapesworld", "csr", ["shapesworld"])
    assert typed.eval.limit >= 500  # the held-out size
    assert typed.model.path.endswith("csr/assets/shapesworld/llava")  # the ${asset:} resolver


def test_paper_groups_validate_with_paper_values() -> None:
    typed = validate(compose_config("search=default", "dpo=default"))
    assert typed.stage == Stage.all
    assert typed.iterations == 3
    assert typed.reward.lam == 0.9
    assert typed.reward.calibration == "rank"
    assert typed.reward.text_score == "mean_logprob"
    s = typed.search
    assert (s.beam_width, s.candidates_per_step, s.keep_top, s.keep_bottom) == (5, 5, 1, 2)
    assert s.max_new_tokens_per_sentence == 70
    assert s.prune_by == "calibrated"
    assert s.delimiters == ["."]
    assert s.decoding.strategy == "diverse_greedy" and s.decoding.diversity_penalty == 3.0
    d = typed.dpo
    assert (d.loss, d.beta, d.lr, d.scheduler, d.warmup_ratio, d.epochs) == ("sigmoid", 0.1, 1e-7, "cosine", 0.03, 1)
    assert (d.lora.r, d.lora.alpha, d.lora.dropout) == (128, 256, 0.05)
    assert d.reference == "precomputed"
    assert d.train_projector is False
    assert list(typed.pairs.filters) == ["empty", "repetition"]
    resolved = _fully_resolved(typed)
    assert resolved["run_dir"] == "/tmp/x"
    assert resolved["search"]["seed"] == resolved["dpo"]["seed"] == resolved["seed"] == 0


def test_validate_resolves_overrides_to_typed_values() -> None:
    typed = validate(compose_config("reward.lam=0.5", "search.beam_width=7", "stage=pairs", "seed=3"))
    assert typed.reward.lam == 0.5 and typed.search.beam_width == 7
    assert typed.stage == Stage.pairs
    assert _fully_resolved(typed)["dpo"]["seed"] == 3


def test_unknown_key_in_a_group_is_named() -> None:
    cfg = compose_config()
    with open_dict(cfg):
        cfg.search.beam_widht = 3
    with pytest.raises(CSRError, match=re.escape("'search.beam_widht'")):
        validate(cfg)


def test_unknown_top_level_key_is_named() -> None:
    cfg = compose_config()
    with open_dict(cfg):
        cfg.iteratoins = 2
    with pytest.raises(CSRError, match=re.escape("'iteratoins'")):
        validate(cfg)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["search.beam_width=five"], "search.beam_width"),  # wrong type
        (["reward.lam=1.5"], "reward.lam"),
        (["reward.lam=-0.1"], "reward.lam"),
        (["stage=foo"], "stage"),
        (["search.beam_width=0"], "search.beam_width"),
        (["search.keep_top=3", "search.keep_bottom=3"], "search.keep_top"),  # 3 + 3 > beam_width 5
        (["dpo.loss=foo"], "dpo.loss"),
        (["reward.calibration=foo"], "reward.calibration"),
        (["dpo.train_projector=true", "dpo.reference=adapter_disabled"], "dpo.reference"),
        (["pairs.filters=[empty,profanity]"], "pairs.filters"),
        (["dpo.label_smoothing=0.5"], "dpo.label_smoothing"),  # robust divides by 1 - 2 ls
        (["search.prune_by=clip"], "search.prune_by"),
        (["iterations=0"], "iterations"),
    ],
)
def test_bad_values_name_their_key(overrides: list[str], key: str) -> None:
    with pytest.raises(CSRError, match=re.escape(f"'{key}'")):
        validate(compose_config(*overrides))


def test_keep_sum_message_names_all_three_keys() -> None:
    with pytest.raises(CSRError) as info:
        validate(compose_config("search.keep_top=2", "search.keep_bottom=4"))
    message = str(info.value)
    assert "'search.keep_top'" in message and "'search.keep_bottom'" in message
    assert "'search.beam_width'" in message and "(2 + 4)" in message and "(5)" in message


def test_keep_sum_equal_to_beam_width_is_allowed() -> None:
    typed = validate(compose_config("search.beam_width=3", "search.keep_top=1", "search.keep_bottom=2"))
    assert typed.search.beam_width == 3


def test_train_projector_with_a_frozen_copy_is_allowed() -> None:
    typed = validate(compose_config("dpo.train_projector=true", "dpo.reference=frozen_copy"))
    assert typed.dpo.train_projector is True


@pytest.mark.parametrize("name", [n for n in _names("experiment") if n.startswith("paper_")])
def test_every_paper_experiment_composes_and_validates(name: str) -> None:
    # The experiments leave the data and CLIP weights to the user (???); fill them.
    paths = [*RUN, "reward.clip.weights=/w", "data.prompt_file=/p.json", "data.image_root=/i"]
    typed = validate(compose_config(f"experiment={name}", paths=paths))
    resolved = _fully_resolved(typed)
    assert resolved["iterations"] == 3
    assert resolved["reward"]["lam"] == 0.9 and resolved["reward"]["clip"]["arch"] == "ViT-L-14-336-quickgelu"
    assert resolved["dpo"]["beta"] == 0.1 and resolved["dpo"]["lr"] == 1e-7
    assert resolved["trainer"]["strategy"] == "deepspeed"
    assert resolved["trainer"]["deepspeed"]["zero_optimization"]["stage"] == 2
    assert resolved["trainer"]["precision"] == "bf16-mixed"
    assert resolved["model"]["dtype"] == "bfloat16"


def test_smoke_experiment_is_the_tiny_setup() -> None:
    paths = [*RUN, "model.path=/m", "reward.clip.weights=/w", "reward.clip.config_json=/c",
             "data.prompt_file=/p.json", "data.image_root=/i"]
    typed = validate(compose_config("experiment=smoke", paths=paths))
    assert (typed.model.name, typed.search.max_sentences, typed.dpo.lora.r, typed.eval.limit) == ("tiny_random", 3, 8, 4)
    assert typed.reward.clip.arch == "tiny-clip" and typed.eval.evaluators == ["generate"]


def test_experiment_names() -> None:
    assert {"paper_llava15_7b", "paper_llava15_13b"} <= set(_names("experiment"))


@pytest.mark.parametrize(("name", "model"), [("paper_llava15_7b", "llava15_7b"), ("paper_llava15_13b", "llava15_13b")])
def test_experiment_picks_its_model(name: str, model: str) -> None:
    paths = [*RUN, "reward.clip.weights=/w", "data.prompt_file=/p.json", "data.image_root=/i"]
    typed = validate(compose_config(f"experiment={name}", paths=paths))
    assert typed.model.name == model


@pytest.mark.parametrize("name", ["paper_llava15_7b", "paper_llava15_13b"])
def test_experiment_leaves_data_to_the_user(name: str) -> None:
    cfg = compose_config(f"experiment={name}", paths=RUN)
    assert OmegaConf.is_missing(cfg.data, "prompt_file") and OmegaConf.is_missing(cfg.data, "image_root")


@pytest.mark.parametrize("name", ["paper_llava15_7b", "paper_llava15_13b"])
def test_experiment_requires_clip_weights(name: str) -> None:
    cfg = compose_config(f"experiment={name}", paths=RUN)
    assert cfg.reward.clip.arch == "ViT-L-14-336-quickgelu"
    weights = OmegaConf.to_container(cfg.reward.clip)["weights"]  # unresolved text
    assert "tiny" not in str(weights)
    assert OmegaConf.is_missing(cfg.reward.clip, "weights")
    with pytest.raises(CSRError, match="reward.clip.weights"):
        validate(compose_config(f"experiment={name}", paths=[*RUN, "data.prompt_file=/p.json", "data.image_root=/i"]))


@pytest.mark.parametrize("name", _names("trainer"))
def test_every_trainer_composes_and_validates(name: str) -> None:
    typed = validate(compose_config(f"trainer={name}"))
    expected = {
        "cpu": ("cpu", "auto", "32-true"),
        "gpu": ("gpu", "auto", "bf16-mixed"),
        "ddp": ("gpu", "ddp", "bf16-mixed"),
        "deepspeed_zero2": ("gpu", "deepspeed", "bf16-mixed"),
        "deepspeed_zero3": ("gpu", "deepspeed", "bf16-mixed"),
        "deepspeed_zero3_offload": ("gpu", "deepspeed", "bf16-mixed"),
    }
    if name in expected:
        assert (typed.trainer.accelerator, typed.trainer.strategy, typed.trainer.precision) == expected[name]
    _fully_resolved(typed)


def test_trainer_names() -> None:
    assert {"cpu", "gpu", "ddp", "deepspeed_zero2", "deepspeed_zero3", "deepspeed_zero3_offload"} <= set(_names("trainer"))


@pytest.mark.parametrize(
    ("name", "path"),
    [("llava15_7b", "llava-hf/llava-1.5-7b-hf"), ("llava15_13b", "llava-hf/llava-1.5-13b-hf")],
)
def test_llava_models_compose_and_validate(name: str, path: str) -> None:
    paths = [p for p in PATHS if not p.startswith("model.path=")]
    typed = validate(compose_config(f"model={name}", paths=paths))
    assert (typed.model.name, typed.model.path, typed.model.dtype) == (name, path, "bfloat16")
    _fully_resolved(typed)


# Every family's real-size presets: (preset, family, Hugging Face id).
FAMILY_PRESETS = [
    ("llava_next_7b", "llava_next", "llava-hf/llava-v1.6-mistral-7b-hf"),
    ("llava_onevision_7b", "llava_onevision", "llava-hf/llava-onevision-qwen2-7b-ov-hf"),
    ("qwen2_vl_7b", "qwen2_vl", "Qwen/Qwen2-VL-7B-Instruct"),
    ("qwen2_5_vl_3b", "qwen2_5_vl", "Qwen/Qwen2.5-VL-3B-Instruct"),
    ("qwen2_5_vl_7b", "qwen2_5_vl", "Qwen/Qwen2.5-VL-7B-Instruct"),
    ("qwen3_vl_8b", "qwen3_vl", "Qwen/Qwen3-VL-8B-Instruct"),
    ("idefics3_8b", "idefics3", "HuggingFaceM4/Idefics3-8B-Llama3"),
    ("smolvlm_2b", "smolvlm", "HuggingFaceTB/SmolVLM-Instruct"),
    ("gemma3_4b", "gemma3", "google/gemma-3-4b-it"),
    ("gemma3_12b", "gemma3", "google/gemma-3-12b-it"),
]


@pytest.mark.parametrize(("name", "family", "path"), FAMILY_PRESETS)
def test_family_presets_compose_and_validate(name: str, family: str, path: str) -> None:
    paths = [p for p in PATHS if not p.startswith("model.path=")]
    typed = validate(compose_config(f"model={name}", paths=paths))
    assert (typed.model.name, typed.model.family, typed.model.path, typed.model.dtype) == (name, family, path, "bfloat16")


def test_every_family_has_a_preset() -> None:
    from csr.config.choices import FAMILIES

    assert {family for _, family, _ in FAMILY_PRESETS} | {"llava"} == set(FAMILIES)
    assert {name for name, _, _ in FAMILY_PRESETS} <= set(_names("model"))


def test_the_neutral_defaults_are_the_schemas() -> None:
    """Without an experiment (`csr ~experiment`) every key holds its default in csr/config/schema.py, the one
    copy, but for the files conf/ names and the seeds that follow the run's: a default changed in a conf/
    file instead of in the schema fails here, and so `csr --help`, the schema and conf/ say the same."""
    from csr.config.schema import RootConfig
    from csr.core.tracking import flatten

    typed = validate(compose_config("~experiment"))
    got = flatten(OmegaConf.to_container(typed, resolve=False, enum_to_str=True))
    schema = flatten(OmegaConf.to_container(OmegaConf.structured(RootConfig), enum_to_str=True))
    named = {p.split("=")[0] for p in PATHS}  # the files, given on the command line here
    harnesses = ("eval.lmms_eval.", "eval.vlmevalkit.")  # conf/eval/harness/: the external tools' presets
    differ = {k for k in got.keys() | schema.keys()
              if got.get(k, "<absent>") != schema.get(k, "<absent>") and k not in named and not k.startswith(harnesses)}
    assert differ == {"search.seed", "dpo.seed", "reward.clip.arch"}  # ${seed}, ${seed}, the tiny CLIP
    assert (typed.model.name, typed.reward.clip.arch, list(typed.eval.evaluators)) == ("tiny_random", "tiny-clip",
                                                                                         ["generate"])


def test_an_experiment_replaces_shapesworld() -> None:
    paths = [*RUN, "reward.clip.weights=/w", "data.prompt_file=/p.json", "data.image_root=/i"]
    typed = validate(compose_config("experiment=paper_llava15_7b", paths=paths))
    assert (typed.search.decoding.strategy, typed.search.max_new_tokens_per_sentence) == ("diverse_greedy", 70)
    assert (list(typed.eval.evaluators), typed.eval.select, typed.data.limit) == (["generate"], None, None)
    assert (typed.dpo.lr, typed.dpo.lora.r, list(typed.pairs.filters)) == (1e-7, 128, [])
