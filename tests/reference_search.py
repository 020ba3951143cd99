"""The reference CSR search, re-implemented faithfully: the oracle tests/test_search_equivalence.py holds
csr's engine to, and the baseline experiments/bench_search times (not part of `csr`).

What the reference code did, and what this keeps:
- every node is expanded alone: a full forward over image + prompt + the answer so far (the vision
  tower included), then its K candidates are decoded together from that prefill's cache;
- nodes, and prompts, are processed one at a time;
- CLIP encodes the image again for every sentence it scores, one sentence per call.

It is a conservative baseline: the prefill runs once per node and is shared by its K candidates, and
candidates that finish leave the batch. HF `generate` with K beams, which the reference code called,
prefills K copies of the input (vision tower included): generate_loop.py is that baseline.

The decoding rules are csr's (`search.decoding.strategy=diverse_greedy`: one beam per group with the
Hamming diversity penalty; EOS and delimiters exempt; after a delimiter, one peek for EOS), written
out again here independently, so that equal trees show the fast engine's caching and batching change
nothing. Pruning and scoring use csr's pure bookkeeping (`csr.reward.tree`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from transformers import DynamicCache

from csr.models.clip import ClipBundle
from csr.models.compat import cache_kwargs
from csr.models.families import Family, get_family
from csr.reward.tree import (
    FINISH_BUDGET,
    FINISH_DELIMITER,
    FINISH_EOS,
    FINISH_TOKENS,
    Node,
    new_root,
    settle_step,
)
from csr.search.decode import DecodeSettings, Sentence
from csr.search.engine import SearchSettings, add_children, answer_ids


class ReferenceSearch:
    def __init__(self, model, processor, settings: SearchSettings, decode: DecodeSettings, clip: ClipBundle | None,
                 family: Family | None = None):
        if decode.strategy != "diverse_greedy":
            raise ValueError("the reference baseline is deterministic: use search.decoding.strategy=diverse_greedy")
        self.model, self.processor, self.s, self.d, self.clip = model, processor, settings, decode, clip
        self.tokenizer = processor.tokenizer
        self.family = family or get_family("llava")
        self.image_encodes = 0

    def search(self, prompts: Sequence[str], images: Sequence[Image.Image], image_keys: Sequence[str]) -> list[list[Node]]:
        return [self._search_one(p, im) for p, im in zip(prompts, images, strict=True)]

    def _search_one(self, prompt: str, image: Image.Image) -> list[Node]:
        tree, live = [new_root()], [0]
        for _ in range(self.s.max_sentences):
            if not live:
                break
            children = []
            for node_id in live:  # one node at a time
                parent = tree[node_id]
                sentences = self._candidates(prompt, image, answer_ids(tree, parent))
                children += [n.id for n, _ in add_children(self.tokenizer, tree, parent, sentences, self.s.text_score)]
            if self.clip is not None and self.s.prune_by == "calibrated":
                for i in children:
                    tree[i].r_i = self._relevance(image, tree[i].text)
            live = settle_step(
                tree, children, lam=self.s.lam, calibration=self.s.calibration, prune_by=self.s.prune_by,
                beam_width=self.s.beam_width, keep_top=self.s.keep_top, keep_bottom=self.s.keep_bottom,
                max_sentences=self.s.max_sentences, rule=self.s.rule,
            )
        return tree

    @torch.no_grad()
    def _relevance(self, image: Image.Image, text: str) -> float:
        """R_I of one sentence, the image encoded again for it (the reference's cost)."""
        device = next(self.clip.model.parameters()).device
        pixels = self.clip.preprocess(image).unsqueeze(0).to(device)
        image_emb = self.clip.model.encode_image(pixels, normalize=True)[0]
        self.image_encodes += 1
        text_emb = self.clip.model.encode_text(self.clip.tokenizer([text]).to(device), normalize=True)[0]
        return max(100.0 * float(text_emb @ image_emb), 0.0)

    def _prefill(self, prompt: str, image: Image.Image, answer: list[int], cache: DynamicCache) -> torch.Tensor:
        """One unpadded forward over image + prompt + answer (the family's own positions); sets the
        offset that places the tokens decoded after it."""
        f, device = self.family, self.model.device
        inputs = f.encode(self.processor, [f.chat_prompt(self.processor, prompt)], [image])
        extra = torch.tensor([answer], dtype=torch.long)
        inputs["input_ids"] = torch.cat([inputs["input_ids"], extra], dim=1)
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        for key in f.token_keys:  # answer tokens are text
            inputs[key] = torch.cat([inputs[key], torch.zeros_like(extra)], dim=1)
        position, self.offset = f.prefill_positions(self.model, inputs)
        rest = {**f.image_inputs(inputs, self.model.dtype), **{key: inputs[key] for key in f.token_keys}}
        out = self.model(input_ids=inputs["input_ids"].to(device), attention_mask=inputs["attention_mask"].to(device),
                         position_ids=position.to(device), **{k: v.to(device) for k, v in rest.items()},
                         **cache_kwargs(cache), use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].float().cpu()

    def _forward(self, ids: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
        """One decode step: each row's token at the next real position (plus the prompt's offset)."""
        length = cache.get_seq_length()
        rows = ids.shape[0]
        position = self.family.decode_positions(torch.full((rows, 1), length), self.offset.expand(rows))
        mask = torch.ones(rows, length + 1, dtype=torch.long)
        device = self.model.device
        out = self.model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=position.to(device),
                         **cache_kwargs(cache), use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].float().cpu()

    @torch.inference_mode()
    def _candidates(self, prompt: str, image: Image.Image, answer: list[int]) -> list[Sentence]:
        """K candidate next sentences of one node, decoded from a full prefill of image + prompt + answer."""
        k, d = self.s.candidates_per_step, self.d
        cache = DynamicCache()
        logits = self._prefill(prompt, image, answer, cache).expand(k, -1)
        cache.batch_repeat_interleave(k)
        budget = self.s.max_answer_tokens - len(answer)
        out = [Sentence() for _ in range(k)]
        active, peeking = list(range(k)), [False] * k  # candidate index of each batch row
        while active:
            logprobs = torch.log_softmax(logits, dim=-1)
            tokens = self._choose(logprobs, [out[g] for g in active], [peeking[g] for g in active], active)
            stay = []
            for row, g in enumerate(active):
                token, sentence = tokens[row], out[g]
                if peeking[g]:
                    sentence.finish = FINISH_EOS if token in d.end_ids else FINISH_DELIMITER
                elif token in d.end_ids:
                    sentence.finish = FINISH_EOS
                else:
                    sentence.token_ids.append(token)
                    sentence.logprobs.append(float(logprobs[row, token]))
                    if len(sentence.token_ids) >= budget:
                        sentence.finish = FINISH_BUDGET
                    elif token in d.delimiter_ids:
                        peeking[g] = True
                        stay.append(row)
                    elif len(sentence.token_ids) >= d.max_new_tokens:
                        sentence.finish = FINISH_TOKENS
                    else:
                        stay.append(row)
            if not stay:
                break
            if len(stay) < len(active):
                cache.batch_select_indices(torch.tensor(stay))
            active = [active[r] for r in stay]
            logits = self._forward(torch.tensor([[tokens[r]] for r in stay]), cache)
        return out

    def _choose(self, logprobs: torch.Tensor, sentences: list[Sentence], peeking: list[bool], groups: list[int]) -> list[int]:
        """One token per row: peeking rows take their argmax and cost no one; then group by group, each
        pays the diversity penalty for the tokens earlier groups chose at this step."""
        d = self.d
        scores = logprobs.clone()
        scores[:, d.suppress_ids] = float("-inf")
        for row, sentence in enumerate(sentences):
            if not sentence.token_ids:
                scores[row, sorted(d.end_ids)] = float("-inf")  # a sentence has at least one token
        chosen = [0] * len(groups)
        taken = torch.zeros(scores.shape[-1])
        exempt = [*sorted(d.end_ids), *d.delimiter_ids]
        for row in sorted(range(len(groups)), key=lambda r: -1 if peeking[r] else groups[r]):
            if peeking[row]:
                chosen[row] = int(scores[row].argmax())
                continue
            chosen[row] = int((scores[row] - d.diversity_penalty * taken).argmax())
            taken[chosen[row]] += 1.0
            taken[exempt] = 0.0
        return chosen
