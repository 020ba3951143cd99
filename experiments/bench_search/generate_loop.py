"""The loop a user would write without csr (benchmark-only): every node expanded by `model.generate`.

For each node it calls `model.generate` on the full text — image + prompt + the answer so far — for K
candidates (`num_beams=K, num_return_sequences=K`: generate's deterministic way to K different
sentences; the reference code's group beam search is no longer in transformers), stopping at EOS or a
delimiter, at most one sentence's tokens. It expands the nodes csr's search expanded (every parent in
csr's trees, the same answers so far), so both decode the same number of candidate sentences; it times
decoding only (no R_T, no CLIP, no pruning), so its time is a lower bound of that loop's.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from PIL import Image

from csr.models.chat import generation_prompt
from csr.reward.tree import Node, path_to
from csr.search.decode import DecodeSettings
from csr.search.engine import SearchSettings


class GenerateLoop:
    def __init__(self, model, processor, settings: SearchSettings, decode: DecodeSettings):
        self.model, self.processor, self.s, self.d = model, processor, settings, decode

    @torch.inference_mode()
    def expand(self, prompt: str, image: Image.Image, answer: str, budget: int) -> list[list[int]]:
        """K candidate next sentences of one node, generated from its full text."""
        k, tok = self.s.candidates_per_step, self.processor.tokenizer
        text = generation_prompt(self.processor, prompt) + answer
        inputs = self.processor(images=[image], text=[text], return_tensors="pt").to(self.model.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        out = self.model.generate(
            **inputs, do_sample=False, num_beams=k, num_return_sequences=k,
            max_new_tokens=min(self.d.max_new_tokens, budget), eos_token_id=[*sorted(self.d.end_ids), *self.d.delimiter_ids],
            suppress_tokens=self.d.suppress_ids, pad_token_id=tok.pad_token_id,
        )
        return out[:, inputs["input_ids"].shape[1] :].tolist()

    def seconds(self, trees: Sequence[Sequence[Node]], prompts: Sequence[str], images: Sequence[Image.Image]) -> float:
        """Wall time to expand every node csr expanded (the parents in `trees`)."""
        t0 = time.perf_counter()
        for tree, prompt, image in zip(trees, prompts, images, strict=True):
            for node_id in sorted({n.parent for n in tree[1:]}):
                node = tree[node_id]
                answer = "".join(n.text for n in path_to(tree, node_id))
                self.expand(prompt, image, answer, self.s.max_answer_tokens - node.answer_tokens)
        if self.model.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0
