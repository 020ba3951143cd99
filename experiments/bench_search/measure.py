"""Run both search engines on one workload: time, peak memory, and the check that their trees agree."""

from __future__ import annotations

import ctypes
import gc
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from workloads import Workload

# The reference algorithm is the tests' oracle (tests/reference_search.py); the benchmark times it.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from reference_search import ReferenceSearch  # noqa: E402

from csr.models.clip import ClipScorer
from csr.models.families import get_family
from csr.reward.tree import Node
from csr.search.engine import TreeSearch

# Score tolerances: the engines compute the same logits through different paddings and cache layouts.
R_T_TOL, R_I_TOL = 1e-4, 1e-3
_LIBC = ctypes.CDLL("libc.so.6")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every millisecond.

    ru_maxrss is a process-lifetime peak, so it cannot separate two engines run in one process;
    freed heap is handed back to the OS (malloc_trim) first so the starting level is honest."""

    def __enter__(self) -> PeakRSS:
        gc.collect()
        _LIBC.malloc_trim(0)
        self.start = self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _rss_mb())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())

    @property
    def mb(self) -> float:
        return self.peak - self.start


@dataclass
class Run:
    engine: str
    seconds: float
    peak_mb: float
    tokens: int  # candidate-sentence tokens written (every node of every tree)
    trees: list[list[Node]]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


def run_engine(engine: str, w: Workload, repeats: int = 1, **caps) -> Run:
    """The best of `repeats` runs (the machine is shared; the minimum is the least disturbed)."""
    best = None
    for _ in range(repeats):
        settings, decode = w.settings(**caps)
        if engine == "csr":
            scorer = ClipScorer(w.clip, device=str(w.model.device))  # a fresh image cache: every run pays its encodes
            search = TreeSearch(w.model, w.processor, get_family(w.family), settings, decode, scorer.relevance).search
        else:
            search = ReferenceSearch(w.model, w.processor, settings, decode, w.clip, get_family(w.family)).search
        n, cuda = w.shape.prompts, w.model.device.type == "cuda"
        if cuda:  # on a GPU the memory that matters is the device's
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            trees = search(w.prompts[:n], w.images[:n], w.keys[:n])
            if cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else mem.mb
        tokens = sum(len(node.token_ids) for tree in trees for node in tree)
        run = Run(engine, seconds, peak, tokens, trees)
        if best is None or run.seconds < best.seconds:
            best = run
    return best


def same_prompts(a: list[list[Node]], b: list[list[Node]]) -> float:
    """The share of prompts whose trees hold the same sentences (bfloat16 cannot promise all of them)."""
    return sum([n.token_ids for n in x] == [n.token_ids for n in y] for x, y in zip(a, b, strict=True)) / len(a)


def assert_same_trees(a: list[list[Node]], b: list[list[Node]]) -> tuple[float, float]:
    """Same candidates, parents, finishes and pruning; scores within tolerance. Returns the max |diff|s."""
    d_t = d_i = 0.0
    assert len(a) == len(b), "different number of trees"
    for p, (x, y) in enumerate(zip(a, b, strict=True)):
        assert [n.token_ids for n in x] == [n.token_ids for n in y], f"prompt {p}: different candidate sentences"
        assert [(n.parent, n.finish, n.kept, n.final) for n in x] == [(n.parent, n.finish, n.kept, n.final) for n in y], \
            f"prompt {p}: different tree structure"
        for m, n in zip(x[1:], y[1:], strict=True):
            d_t = max(d_t, abs(m.r_t - n.r_t))
            d_i = max(d_i, abs(m.r_i - n.r_i))
    assert d_t <= R_T_TOL, f"R_T differs by {d_t}"
    assert d_i <= R_I_TOL, f"R_I differs by {d_i}"
    return d_t, d_i


def warm_up(w: Workload) -> None:
    """One short search per engine: first calls pay for thread pools and allocator growth."""
    small = w.with_shape(max_sentences=1, prompts=1)
    run_engine("csr", small)
    run_engine("reference", small)
