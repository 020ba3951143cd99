"""Every `csr*` command line in the code blocks of the README and of every docs/ page parses as written:
the Hydra overrides of `csr` (and of `csr-plan`) compose over conf/ and validate against the schema, the
other tools' arguments pass their argparse parsers. Placeholders (`...`, `<run id>`, dates) are filled
with dummies."""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from csr.cli import CONF_DIR, _schema_keys, unknown_key
from csr.config.schema import validate
from csr.models.clip import check_activation

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
TOOLS = {"csr-reproduce": "csr.commands.reproduce", "csr-compare": "csr.commands.compare", "csr-inspect": "csr.inspect.site",
         "csr-make-tiny": "csr.models.tiny", "csr-pope": "csr.eval.pope"}


def readme_commands(text: str) -> list[str]:
    """The csr* lines of the fenced code blocks, continuation lines joined, comments dropped."""
    commands, block, pending = [], False, ""
    for line in text.splitlines():
        if line.startswith("```"):
            block = not block
            continue
        if not block:
            continue
        line = pending + line.strip() if pending else line.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if re.match(r"csr(-[a-z-]+)?(\s|$)", line):
            commands.append(line)
    return commands


def fill(command: str) -> list[str]:
    """Words of the command with comments dropped and placeholders filled."""
    command = re.sub(r"\s#\s.*$", "", command)
    command = command.replace("<run id>", "0123abcd").replace("$PWD", "/tmp")
    command = re.sub(r"<[^>]+>", "x", command).replace("...", "x")
    return shlex.split(command)


class Parsed(Exception):  # noqa: N818 - a signal out of main(), not an error
    pass


def _parse_only(monkeypatch) -> None:
    for name in ("parse_args", "parse_intermixed_args"):
        real = getattr(argparse.ArgumentParser, name)

        def stop(self, *args, _real=real, **kwargs):
            raise Parsed(_real(self, *args, **kwargs))

        monkeypatch.setattr(argparse.ArgumentParser, name, stop)


# (page, command) for every csr* command of the README and the docs pages; a test id names both.
COMMANDS = [(doc.relative_to(ROOT).as_posix(), c) for doc in DOCS for c in readme_commands(doc.read_text())]


def _ids(cases: list[tuple[str, str]]) -> list[str]:
    return [f"{page}: {command}" for page, command in cases]


def _cases(select) -> list[tuple[str, str]]:
    return [(page, c) for page, c in COMMANDS if select(c.split()[0])]


def test_the_readme_has_commands_and_continuations_are_joined():
    readme = [c for page, c in COMMANDS if page == "README.md"]
    assert len(readme) >= 10
    joined = [c for c in readme if "model=llava15_7b" in c]
    assert joined and "trainer=gpu" in joined[0]  # its fourth line


def test_every_command_is_checked():
    """A csr* command of a tool this file cannot check would pass unseen: each one is `csr`, `csr-plan` or a TOOL."""
    assert len({page for page, _ in COMMANDS}) >= 6, "the docs pages' commands are read"
    unchecked = [c for _, c in COMMANDS if c.split()[0] not in {"csr", "csr-plan", *TOOLS}]
    assert not unchecked, unchecked


@pytest.mark.parametrize("page,command", _cases(lambda tool: tool in TOOLS), ids=_ids(_cases(lambda tool: tool in TOOLS)))
def test_tool_command_parses(page, command, monkeypatch):
    words = fill(command)
    _parse_only(monkeypatch)
    with pytest.raises(Parsed):
        importlib.import_module(TOOLS[words[0]]).main(words[1:])


@pytest.mark.parametrize("page,command", _cases(lambda tool: tool == "csr"), ids=_ids(_cases(lambda tool: tool == "csr")))
def test_csr_command_composes_and_validates(page, command):
    words = fill(command)[1:]
    overrides = [w for w in words if w not in ("-m", "--multirun")]
    if len(overrides) != len(words):  # a sweep: each of its runs composes as the first one does
        overrides = [o.split(",")[0] if "=" in o else o for o in overrides]
    _composes_and_validates(overrides)


@pytest.mark.parametrize("page,command", _cases(lambda tool: tool == "csr-plan"),
                         ids=_ids(_cases(lambda tool: tool == "csr-plan")))
def test_plan_command_parses_and_its_overrides_validate(page, command, monkeypatch):
    """csr-plan's options pass its parser (it reads them with parse_known_args), its overrides as csr's."""
    real = argparse.ArgumentParser.parse_known_args

    def stop(self, *args, **kwargs):
        raise Parsed(real(self, *args, **kwargs))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", stop)
    with pytest.raises(Parsed) as parsed:
        importlib.import_module("csr.commands.plan").main(fill(command)[1:])
    args, rest = parsed.value.args[0]
    assert not [a for a in rest if a.startswith("-")], rest
    _composes_and_validates([*args.overrides, *rest], run=False)


def _composes_and_validates(overrides: list[str], run: bool = True) -> None:
    """Every key is a schema key and the overrides compose; for a run (not a plan, which leaves the data
    and CLIP weights unset) the composed config also validates."""
    leaves, nodes = _schema_keys()
    for o in overrides:
        if o.startswith("+"):  # an added key (e.g. into eval.lmms_eval.env): as csr's CLI, left to validate()
            continue
        assert unknown_key(o.split("=", 1)[0].lstrip("~"), leaves, nodes) is None, o
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, "run_dir=/tmp/run"], return_hydra_config=True)
    cfg.hydra.runtime.cwd = "/tmp"  # what the app sets; ${hydra:runtime.cwd} resolves through it
    HydraConfig.instance().set_config(cfg)
    if not run:
        return
    with open_dict(cfg):
        del cfg["hydra"]
    typed = validate(cfg)
    # ${hydra:runtime.cwd} resolves only inside the app: an interpolated (tiny) weights path is not OpenAI's
    check_activation(typed.reward.clip.arch, OmegaConf.select(typed, "reward.clip.weights",
                                                              throw_on_resolution_failure=False))


def test_unknown_key_says_did_you_mean():
    leaves, nodes = _schema_keys()
    assert unknown_key("search.beam_widht", leaves, nodes) == (
        "config key 'search.beam_widht': not a csr config key; did you mean 'search.beam_width'? "
        "(`csr --help` lists the keys; +search.beam_widht=... adds one anyway)")
    for known in ("search.beam_width", "experiment", "hydra/launcher", "trainer.deepspeed.zero_optimization.stage"):
        assert unknown_key(known, leaves, nodes) is None, known
