"""The expected values of tests/test_clean_tree.py from the authors' code, unchanged:
`python tests/authors_clean_tree.py AUTHORS_DIR OUT_DIR` prints them as JSON.

AUTHORS_DIR is a checkout's `inference_csr/` (YiyangZhou/CSR), importable through PYTHONPATH with `shortuuid`
(utils.py needs it): PYTHONPATH=<site with shortuuid>:AUTHORS_DIR.
Each tree of test_clean_tree.TREES goes through what score.py's eval_model does per tree (utils.clean_tree,
then score.get_result: dfs_score with its 4-character test, calculate_ranks) and is saved with
utils.save_pickle; then `python construct.py` (step3.sh's command) pairs them all, and construct.dfs gives
every answer's path score. Their code is only called, never copied:
- their Node texts are cumulative: child = parent + "###" + sentence, so their 3-character cut leaves
  exactly csr's sentence, and "###" is taken out of their output again; the prompt has nothing after
  <image> for construct.py's re.sub to take;
- Node.score is cumulative, as sample.py writes it;
- CLIP is a table: the tree's R_I keyed by the text score.py hands to CLIP.
Nothing here is a test (pytest collects test_*.py only).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import torch
from clean_tree_cases import LAM, TREES

PROMPT = "USER: <image>Describe the image. ASSISTANT:"
SEPARATOR = "###"


class _Inputs(dict):
    def to(self, device):
        return self


class TableProcessor:
    """Stands in for CLIP's processor: passes the text on."""

    def __call__(self, text, images, return_tensors, padding):
        return _Inputs(text=text[0])


class TableClip:
    """Stands in for CLIPModel: logits_per_image is the tree's R_I for that text."""

    device = "cpu"

    def __init__(self, table: dict[str, float]):
        self.table = table

    def __call__(self, text: str):
        return type("Output", (), {"logits_per_image": torch.tensor([[self.table[text]]], dtype=torch.float64)})


def their_tree(utils, spec: list[tuple]):
    """The authors' Node tree of one spec, and the R_I table keyed as score.py will ask for it."""
    nodes, table = [utils.Node(PROMPT, 0, 0)], {}
    for parent_id, sentence, r_t, r_i, final in spec:
        parent = nodes[parent_id]
        node = utils.Node(parent.text + SEPARATOR + sentence, parent.score + r_t, parent.depth + 1, parent, final)
        parent.add_child(node)
        nodes.append(node)
        key = utils.extract_new_text(node.text, parent.text)
        if table.setdefault(key, r_i) != r_i:
            raise ValueError(f"two sentences read {key!r} to CLIP with different R_I")
    return nodes[0], table


def main(authors_dir: Path, out_dir: Path) -> dict:
    import construct
    import score
    import utils

    pickles = out_dir / "score"
    pickles.mkdir(parents=True, exist_ok=True)
    for name, spec in TREES.items():
        root, table = their_tree(utils, spec)
        tree = utils.clean_tree(root)
        for obj in score.get_result(name, tree, TableClip(table), TableProcessor(), image="unused"):
            with contextlib.redirect_stdout(sys.stderr):  # it prints where it saved
                utils.save_pickle(obj, str(pickles / f"{obj['qid']}.pkl"))
    output = out_dir / "construct.json"
    subprocess.run([sys.executable, "construct.py", "--folder_path", str(pickles), "--image_dir", "unused",
                    "--clip_alpha", str(LAM), "--output_file", str(output)], cwd=authors_dir, check=True,
                   stdout=subprocess.DEVNULL)

    def ours(text: str) -> str:
        return text.replace(SEPARATOR, "")

    pairs = {d["id"]: [ours(d["conversations"][1]["value"]), ours(d["rejected_conversations"][1]["value"])]
             for d in json.loads(output.read_text())}
    scores = {}
    for name in TREES:  # construct.process_data's own steps, for the path scores it sorts by
        tree = utils.load_pickle(str(pickles / f"{name}.pkl"))["tree"]
        tree.calculate_ranks()
        scores[name] = [[ours(path[-1][0][len(PROMPT):]), total / len(path)]
                        for path, total in construct.dfs(tree, clip_alpha=LAM)]
    return {"pairs": pairs, "scores": scores}


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()), ensure_ascii=False, indent=1))
