"""Sentence-level tree search for a batch of prompts on a LLaVA-style policy.

One prefill per (image, prompt); at each depth every live node re-feeds only its answer tokens on
top of its prompt's cached prefix (never the prompt or the image), and the K candidates of all
live nodes of all prompts decode together in batches of at most `max_batch_rows` rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from csr.models.chat import generation_prompt
from csr.reward.scores import text_score
from csr.search import kv
from csr.search.decode import DecodeSettings, Rows, Sentence, decode_sentences
from csr.search.tree import Node, new_root, path_to, settle_step

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


@dataclass
class Prefix:
    """The cached prompts of one batch (left-padded to a common length)."""

    cache: kv.DynamicCache
    mask: torch.Tensor  # [P, Lp]
    last_logits: torch.Tensor  # [P, V]
    length: torch.Tensor  # [P] real prompt tokens, image tokens included


def prefill(model: torch.nn.Module, processor, prompts: Sequence[str], images: Sequence[Image.Image]) -> Prefix:
    texts = [generation_prompt(processor, p) for p in prompts]
    inputs = processor(images=list(images), text=texts, return_tensors="pt", padding=True)
    mask = inputs["attention_mask"]
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    pixel_values = inputs["pixel_values"].to(model.dtype)
    with torch.inference_mode():
        logits, cache = kv.forward(model, inputs["input_ids"], mask, position, pixel_values=pixel_values)
    return Prefix(cache=cache, mask=mask, last_logits=logits[:, -1], length=mask.sum(-1))


class TreeSearch:
    def __init__(self, model, processor, settings: SearchSettings, decode: DecodeSettings, relevance: RelevanceFn | None):
        self.model, self.processor, self.s, self.decode = model, processor, settings, decode
        self.tokenizer = processor.tokenizer
        self.relevance = relevance  # needed during the search only when pruning by the calibrated reward

    def search(self, prompts: Sequence[str], images: Sequence[Image.Image], image_keys: Sequence[str]) -> list[list[Node]]:
        """The full tree of every prompt (nodes[i].id == i)."""
        prefix = prefill(self.model, self.processor, prompts, images)
        trees = [[new_root()] for _ in prompts]
        live = [(p, 0) for p in range(len(prompts))]
        for _ in range(self.s.max_sentences):  # every step adds one sentence to each live answer
            if not live:
                break
            children: list[list[int]] = [[] for _ in prompts]
            for chunk in self._chunks(prefix, trees, live):
                sentences = self._expand(prefix, [trees[p][n] for p, n in chunk], [p for p, _ in chunk], trees)
                k = self.s.candidates_per_step
                for j, (p, n) in enumerate(chunk):
                    new = add_children(self.tokenizer, trees[p], trees[p][n], sentences[j * k : (j + 1) * k],
                                       self.s.text_score)
                    children[p] += [node.id for node, _ in new]
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
                    max_sentences=self.s.max_sentences,
                )
                live += [(p, i) for i in kept]
        return trees

    def _chunks(self, prefix: Prefix, trees: list[list[Node]], live: list[tuple[int, int]]):
        """Consecutive runs of live nodes whose decode batch stays within `max_batch_rows` rows and
        `max_batch_tokens` cached tokens (rows x (prompt + longest answer + one sentence)); a node's K
        candidates always decode together (the diversity penalty compares them), so a run has >= 1 node."""
        k, prompt_width = self.s.candidates_per_step, prefix.mask.shape[1]
        chunk: list[tuple[int, int]] = []
        width = 0
        for p, n in live:
            wider = max(width, trees[p][n].answer_tokens)
            rows = (len(chunk) + 1) * k
            tokens = rows * (prompt_width + wider + self.decode.max_new_tokens)
            if chunk and (rows > self.s.max_batch_rows or tokens > self.s.max_batch_tokens):
                yield chunk
                chunk, wider = [], trees[p][n].answer_tokens
            chunk.append((p, n))
            width = wider
        if chunk:
            yield chunk

    def _expand(self, prefix: Prefix, nodes: list[Node], prompt_idx: list[int], trees) -> list[Sentence]:
        """K candidate sentences for each node, decoded in one batch."""
        k = self.s.candidates_per_step
        rows_p = torch.tensor(prompt_idx)
        cache = kv.select_rows(prefix.cache, rows_p)
        mask = prefix.mask[rows_p]
        answers = [answer_ids(trees[p], n) for p, n in zip(prompt_idx, nodes, strict=True)]
        lengths = torch.tensor([len(a) for a in answers])
        if lengths.max() == 0:  # the roots: continue straight from the prompt
            logits = prefix.last_logits[rows_p]
        else:  # feed the answers so far, right-padded; pads are masked out and take no position
            width = int(lengths.max())
            pad = self.tokenizer.pad_token_id
            ids = torch.tensor([a + [pad] * (width - len(a)) for a in answers])
            answer_mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
            mask = torch.cat([mask, answer_mask], dim=1)
            position = prefix.length[rows_p, None] + torch.arange(width)[None, :]
            with torch.inference_mode():
                step_logits, cache = kv.forward(self.model, ids, mask, position, cache=cache)
            logits = step_logits[torch.arange(len(nodes)), lengths - 1]
        expand = torch.arange(len(nodes)).repeat_interleave(k)
        rows = Rows(
            cache=kv.select_rows(cache, expand),
            attention_mask=mask[expand],
            next_logits=logits[expand],
            next_position=(prefix.length[rows_p] + lengths)[expand],
            budget=[self.s.max_answer_tokens - int(lengths[i]) for i in expand],
            group=[g for _ in nodes for g in range(k)],
            node=expand.tolist(),
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
