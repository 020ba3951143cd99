"""Configs saved before a key was renamed read as today's (csr/config/upgrade.py): resumed, reproduced
and inspected under the current schema."""

from __future__ import annotations

import pytest
from compose_config import compose_config
from omegaconf import OmegaConf

from csr.commands.reproduce import _upgrade_configs
from csr.config.schema import validate
from csr.config.upgrade import _harness_preset, upgrade
from csr.core.errors import CSRError
from csr.run.run_dir import check_resume

BEFORE = {"data": {"shapesworld_root": "/sw", "shapesworld_split": "csr", "shapesworld_size": 1000, "limit": 200},
          "eval": {"split": "val", "shapesworld_root": "/sw", "pope_images": 40, "limit": 500}}
AFTER = {"data": {"shapesworld": {"root": "/sw", "split": "csr", "size": 1000}, "limit": 200},
         "eval": {"shapesworld": {"root": "/sw", "split": "val", "pope_images": 40}, "limit": 500,
                  "temperature": 0.0, "sample_seed": 0,  # evaluations were greedy before the keys
                  "select": None,  # and no iteration was selected
                  # and no harness ran: today's inert blocks (csr/eval/harness.py)
                  "lmms_eval": _harness_preset("lmms_eval"), "vlmevalkit": _harness_preset("vlmevalkit")}}


def test_renamed_keys_move_to_their_blocks():
    assert upgrade(BEFORE) == AFTER
    assert upgrade(AFTER) == AFTER  # today's configs are left as they are


def test_an_added_key_gets_the_value_that_did_what_csr_did_before_it():
    assert upgrade({"search": {"beam_width": 5}}) == {"search": {"beam_width": 5, "compact_fraction": 0.0}}
    assert upgrade({"search": {"compact_fraction": 0.25}}) == {"search": {"compact_fraction": 0.25}}
    assert BEFORE["eval"]["split"] == "val"  # the input is not changed


def test_an_old_run_dir_resumes_without_a_diff(tmp_path):
    # eval.select=null: an old run resumes as it ran, without today's selection (csr/run/selection.py)
    text = OmegaConf.to_yaml(compose_config("eval.shapesworld.split=val", "eval.shapesworld.pope_images=40",
                                            "eval.select=null"), resolve=True)
    saved = OmegaConf.to_container(OmegaConf.create(text))
    del saved["eval"]["select"]  # written before the key existed
    data, evaluation = saved["data"].pop("shapesworld"), saved["eval"].pop("shapesworld")
    del saved["search"]["compact_fraction"]  # written before the key existed: it compacted at once (0.0)
    saved["data"].update({f"shapesworld_{key}": value for key, value in data.items()})  # as csr wrote it before
    saved["eval"].update(shapesworld_root=evaluation["root"], split=evaluation["split"],
                         pope_images=evaluation["pope_images"])
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(saved)))
    with pytest.raises(CSRError, match=r"search\.compact_fraction: 0\.0 -> 0\.25"):  # refused, as any change
        check_resume(tmp_path, text, [])
    assert check_resume(tmp_path, text.replace("compact_fraction: 0.25", "compact_fraction: 0.0"), []) == {}
    _upgrade_configs(tmp_path)  # what csr-reproduce does with a copied config: it validates as today's
    typed = validate(OmegaConf.load(tmp_path / "config.yaml"))
    assert (typed.eval.shapesworld.split, typed.eval.shapesworld.pope_images, typed.data.shapesworld.split) == (
        "val", 40, "csr")
