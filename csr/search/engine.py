"""Sentence-level tree search for a batch of prompts on a VLM policy of any family.

One prefill per (image, prompt). Every sentence the decoder writes leaves with its own keys/values
and the logits of the token after it, so a node continues from its parent's cache: its decode rows
are assembled from the prompt's prefix and the sentences on its path, and nothing is read twice.
The K candidates of all live nodes of all prompts decode together, in batches capped by
`max_batch_rows` rows and `max_batch_tokens` cached tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from csr.models.families.base import Family
from csr.reward.rules import PairRule
from csr.reward.rules.mean import MEAN
from csr.reward.scores import text_score
from csr.reward.tree import ROOT, Node, new_root, path_to, settle_step
from csr.search import kv
from csr.search.decode import Continuation, DecodeSettings, Rows, Sentence, decode_sentences

log = logging.getLogger(__name__)

# (image key, image, sentences) -> R_I per sentence
RelevanceFn = Callable[[str, Image.Image, list[str]], list[float]]


@dataclass
class SearchSettings:
    beam_width: int
    candidates_per_step: int
    keep_top: int
    keep_bottom: int
    max_sentences: int
    max_answer_tokens: int
    prune_by: str
    lam: float
    calibration: str
    text_score: str
    max_batch_rows: int
    max_batch_tokens: int
    rule: PairRule = MEAN  # pairs.rule: with prune_by=calibrated the search scores and ranks as that rule does


@dataclass
class Prefix:
    """The cached prompts of one batch (left-padded to a common length)."""

    cache: kv.DynamicCache
    mask: torch.Tensor  # [P, Lp]
    last_logits: torch.Tensor  # [P, V]
    length: torch.Tensor  # [P] real prompt tokens, image tokens included
    offset: torch.Tensor  # [P] a later token's position id = its count of real tokens before it + offset


def prefill(model: torch.nn.Module, processor, family: Family, prompts: Sequence[str],
            images: Sequence[Image.Image]) -> Prefix:
    texts = [family.chat_prompt(processor, p) for p in prompts]
    inputs = family.encode(processor, texts, images)
    mask = inputs["attention_mask"]
    position, offset = family.prefill_positions(model, inputs)
    extra = {**family.image_inputs(inputs, model.dtype), **{key: inputs[key] for key in family.token_keys}}
    with torch.inference_mode():
        logits, cache = kv.forward(model, inputs["input_ids"], mask, position, inputs=extra)
    return Prefix(cache=cache, mask=mask, last_logits=logits, length=mask.sum(-1), offset=offset)


class TreeSearch:
    def __init__(self, model, processor, family: Family, settings: SearchSettings, decode: DecodeSettings,
                 relevance: RelevanceFn | None):
        self.model, self.processor, self.family, self.s, self.decode = model, processor, family, settings, decode
        self.tokenizer = processor.tokenizer
        self.relevance = relevance  # needed during the search only when pruning by the calibrated reward

    def search(self, prompts: Sequence[str], images: Sequence[Image.Image], image_keys: Sequence[str]) -> list[list[Node]]:
        """The full tree of every prompt (nodes[i].id == i)."""
        prefix = prefill(self.model, self.processor, self.family, prompts, images)
        trees = [[new_root()] for _ in prompts]
        # (prompt, node id) -> the node's continuation, kept while the node or a descendant is live
        states: dict[tuple[int, int], Continuation] = {}
        live = [(p, ROOT) for p in range(len(prompts))]
        for _ in range(self.s.max_sentences):  # every step adds one sentence to each live answer
            if not live:
                break
            children: list[list[int]] = [[] for _ in prompts]
            for chunk in self._chunks(trees, live):
                sentences = self._expand(prefix, trees, states, chunk)
                k = self.s.candidates_per_step
                for j, (p, n) in enumerate(chunk):
                    new = add_children(self.tokenizer, trees[p], trees[p][n], sentences[j * k : (j + 1) * k],
                                       self.s.text_score)
                    children[p] += [node.id for node, _ in new]
                    states.update({(p, node.id): sentence.state for node, sentence in new if sentence.state})
            if self.relevance is not None and self.s.prune_by == "calibrated":
                for p, ids in enumerate(children):
                    texts = [trees[p][i].text for i in ids]
                    for i, r_i in zip(ids, self.relevance(image_keys[p], images[p], texts), strict=True):
                        trees[p][i].r_i = r_i
            live = []
            for p, ids in enumerate(children):
                kept = settle_step(
                    trees[p], ids, lam=self.s.lam, calibration=self.s.calibration, prune_by=self.s.prune_by,
                    beam_width=self.s.beam_width, keep_top=self.s.keep_top, keep_bottom=self.s.keep_bottom,
                    max_sentences=self.s.max_sentences, rule=self.s.rule,
                )
                live += [(p, i) for i in kept]
            on_paths = {(p, a.id) for p, n in live for a in path_to(trees[p], n)}
            states = {key: state for key, state in states.items() if key in on_paths}  # free pruned branches
        return trees

    def _chunks(self, trees: list[list[Node]], live: list[tuple[int, int]]):
        """Consecutive runs of live nodes whose decode batch stays within `max_batch_rows` rows and
        `max_batch_tokens` cached tokens of its own (rows x (longest answer + one sentence); the prompts'
        prefixes are shared, one copy per prompt); a node's K candidates always decode together (the
        diversity penalty compares them), so a run has >= 1 node."""
        k = self.s.candidates_per_step
        chunk: list[tuple[int, int]] = []
        width = 0
        for p, n in live:
            wider = max(width, trees[p][n].answer_tokens)
            rows = (len(chunk) + 1) * k
            tokens = rows * (wider + self.decode.max_new_tokens)
            if chunk and (rows > self.s.max_batch_rows or tokens > self.s.max_batch_tokens):
                yield chunk
                chunk, wider = [], trees[p][n].answer_tokens
            chunk.append((p, n))
            width = wider
        if chunk:
            yield chunk

    def _expand(self, prefix: Prefix, trees: list[list[Node]], states: dict[tuple[int, int], Continuation],
                chunk: list[tuple[int, int]]) -> list[Sentence]:
        """K candidate sentences for each node of `chunk`, decoded in one batch from their parents' caches."""
        k = self.s.candidates_per_step
        nodes = [trees[p][n] for p, n in chunk]
        prompt_rows = [p for p, _ in chunk]
        paths = [[states[(p, a.id)].segment for a in path_to(trees[p], n)] for p, n in chunk]
        lengths = torch.tensor([node.answer_tokens for node in nodes])
        width = int(lengths.max())
        cache = kv.assemble(prefix.cache, prompt_rows, paths, k, width, spare=self.decode.max_new_tokens)
        # The answers are right-padded to `width`: the holes are masked out and take no position.
        answer_mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
        mask = torch.cat([prefix.mask[prompt_rows], answer_mask], dim=1)
        logits = torch.stack([prefix.last_logits[p] if n == ROOT else states[(p, n)].next_logits for p, n in chunk])
        expand = torch.arange(len(chunk)).repeat_interleave(k)
        rows = Rows(
            cache=cache,
            attention_mask=mask[expand],
            next_logits=logits[expand],
            next_position=(prefix.length[prompt_rows] + lengths)[expand],
            budget=[self.s.max_answer_tokens - int(lengths[i]) for i in expand],
            group=[g for _ in chunk for g in range(k)],
            node=expand.tolist(),
            # a child at the last depth is final whatever it writes: nothing will continue it
            keep=[nodes[i].depth + 1 < self.s.max_sentences for i in expand],
            offset=prefix.offset[prompt_rows][expand],
            to_positions=self.family.decode_positions,
        )
        return decode_sentences(self.model, rows, self.decode)


def answer_ids(tree: list[Node], node: Node) -> list[int]:
    """The answer's token ids from the first sentence to `node` (never prompt or image tokens)."""
    return [t for n in path_to(tree, node.id) for t in n.token_ids]


def add_children(tokenizer, tree: list[Node], parent: Node, sentences: Sequence[Sentence],
                 text_score_form: str) -> list[tuple[Node, Sentence]]:
    """Append the distinct non-empty candidates of `parent` to its tree; returns each new node with the
    sentence it came from."""
    before = answer_ids(tree, parent)
    prev_text = tokenizer.decode(before, skip_special_tokens=True)
    seen: set[str] = set()
    added = []
    for sentence in sentences:
        if not sentence.token_ids:
            continue
        full = tokenizer.decode(before + sentence.token_ids, skip_special_tokens=True)
        # Slice the whole answer's text so that sentences concatenate to exactly the answer:
        # decoding a sentence alone can drop or add a leading space.
        text = full[len(prev_text) :] if full.startswith(prev_text) else tokenizer.decode(sentence.token_ids)
        if text in seen or not text.strip():
            continue
        seen.add(text)
        node = Node(
            id=len(tree), parent=parent.id, depth=parent.depth + 1, text=text, token_ids=sentence.token_ids,
            r_t=text_score(sentence.logprobs, text_score_form), finish=sentence.finish,
            answer_tokens=parent.answer_tokens + len(sentence.token_ids),
        )
        tree.append(node)
        added.append((node, sentence))
    return added
