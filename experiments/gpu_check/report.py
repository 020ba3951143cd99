"""The pass criteria (README.md's table): every figure of results.json against its limit.

Kinds: `exact` (a wrong number: counts in every mode), `perf` and `memory` (count on a GPU only: the
dry run's narrow float32 models on a CPU say nothing about an H100's speed or memory).
"""

from __future__ import annotations

HOST_SHARE_LIMIT = 0.5  # the GPU works at least half of every decode step
SPEEDUP_LIMIT = 1.0  # csr's search writes tokens at least as fast as each baseline


def _get(d: dict | None, *keys):
    for key in keys:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def check(name: str, model: str, kind: str, value, limit, passed, note: str | None = None) -> dict:
    return {"name": name, "model": model, "kind": kind, "value": value, "limit": limit, "passed": passed, "note": note}


def _why_missing(section: dict | None) -> str:
    if section is None:
        return "section not run"
    return str(section.get("skipped") or section.get("trl_skipped") or section.get("error") or section.get("status"))


def _memory(name: str, model: str, row: dict | None) -> dict:
    if not row or row.get("within_plan") is None:
        return check(name, model, "memory", None, None, None, (row or {}).get("plan_error", "not measured"))
    return check(name, model, "memory", row["measured_gib"], row["predicted_gib"], row["within_plan"],
                 f"{row['memory']}, measured / predicted {row['measured_over_predicted']}")


def evaluate(results: dict, models: list[str], dry: bool) -> list[dict]:
    s = results["sections"]
    out = []
    for m in models:
        search = s.get(f"search-{m}")
        r_t = _get(search, "r_t")
        out.append(check("R_T: csr search vs uncached HF forward", m, "exact", _get(r_t, "max_abs_csr_vs_hf"),
                         _get(r_t, "tolerance"), _get(r_t, "passed"), None if r_t else _why_missing(search)))
        out.append(check("R_T check's power: median |R_T change| when the answer is one position off", m, "exact",
                         _get(r_t, "median_abs_shift_by_one"), _get(r_t, "tolerance"), _get(r_t, "sees_shift_by_one")))
        out.append(check("model has the published parameter count", m, "exact", _get(search, "model", "params"),
                         _get(search, "model", "expected_params"), _get(search, "model", "params_match")))
        speed = _get(search, "speed")
        for base in ("reference", "generate"):
            value = _get(speed, f"speedup_vs_{base}")
            out.append(check(f"search tokens/s, csr / {base}", m, "perf", value, SPEEDUP_LIMIT,
                             None if value is None else value >= SPEEDUP_LIMIT))
        share = _get(search, "host", "host_share")
        out.append(check("host share of a decode step", m, "perf", share, HOST_SHARE_LIMIT,
                         None if share is None else share <= HOST_SHARE_LIMIT))
        out.append(_memory("search peak vs csr-plan", m, _get(search, "search_memory")))
        zero2 = s.get(f"zero2-{m}")
        step0 = _get(zero2, "zero2", "step0_check")
        out.append(check("ZeRO-2 step 0: |log-ratio| (precomputed reference)", m, "exact",
                         _get(step0, "max_abs_log_ratio"), _get(step0, "tolerance"), _get(step0, "passed"),
                         None if step0 else _why_missing(zero2)))
        out.append(_memory("reference pass peak vs csr-plan", m, _get(zero2, "zero2", "reference_memory")))
        out.append(_memory("DPO step peak vs csr-plan", m, _get(zero2, "zero2", "dpo_memory")))
        compare = s.get(f"compare-{m}")
        trl = _get(compare, "against_trl")
        out.append(check("DPO step time and peak, csr / TRL", m, "perf",
                         None if trl is None else [trl["step_s_ratio"], trl["peak_ratio"]], _get(trl, "limit"),
                         _get(trl, "passed"), None if trl else _why_missing(compare)))
        merge = _get(s.get("merge"), m)
        out.append(check("merge: merged model's log-probs = adapter model's", m, "exact", _get(merge, "check_passed"),
                         True, _get(merge, "check_passed"), None if merge else _why_missing(s.get("merge"))))
        out.append(_memory("merge peak (host, above its start) vs csr-plan", m, _get(merge, "host_memory")))
        out.append(_memory("merge check peak (GPU) vs csr-plan", m, _get(merge, "gpu_memory")))
    for c in out:
        c["counts"] = c["passed"] is not None and (c["kind"] == "exact" or not dry)
    return out


def _cell(x) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    if isinstance(x, list):
        return " / ".join(_cell(v) for v in x)
    return "–" if x is None else str(x)


def table(checks: list[dict]) -> str:
    lines = ["| check | model | kind | value | limit | result |", "|---|---|---|---|---|---|"]
    for c in checks:
        result = {True: "pass", False: "FAIL", None: "not run"}[c["passed"]]
        if c["passed"] is not None and not c["counts"]:
            result += " (not counted)"
        note = f" ({c['note']})" if c["note"] else ""
        lines.append(f"| {c['name']} | {c['model']} | {c['kind']} | {_cell(c['value'])} | {_cell(c['limit'])} "
                     f"| {result}{note} |")
    return "\n".join(lines)
