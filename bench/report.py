"""Short human tables for ``bench/results/REPORT.md``, one per benchmark, from its JSON file.

Each summary says what was measured, on which machine, and the ratios that matter; the raw
numbers stay in ``bench/results/<name>.json`` beside the report. A benchmark whose JSON is
missing says so (the GPU benchmark until a GPU machine runs it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Summary = Callable[[dict[str, Any]], list[str]]


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A Markdown table; floats get 2 decimals (or 3 below 1), None a dash."""

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.3f}" if abs(value) < 1 else f"{value:.2f}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return lines


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}×"


def bulk_caption(data: dict[str, Any]) -> list[str]:
    engines = data["engines"]
    rows = []
    for name, r in engines.items():
        stages = r.get("stage_seconds", {})
        rows.append([
            name, r["images_per_s"], ratio(r.get("ratio_to_torch", 1.0 if name == "torch" else None)),
            percent(r.get("captions_equal_to_torch", 1.0 if name == "torch" else None)),
            stages.get("read", 0.0) + stages.get("preprocess", 0.0), stages.get("encode"), stages.get("search"),
            r["peak_rss_mb"],
        ])  # fmt: skip
    lines = [
        f"Model: {data.get('model', '?')}, {data['config']['family']} / {data['config']['backbone']} at "
        f"{data['config']['image_size']} px; {data['config']['n_images']} unseen images, batch "
        f"{data['config']['batch_size']}, beam {data['config']['beam_size']}, {data['config']['threads']} threads.",
        "",
        *table(
            ["engine", "images/s", "× torch fp32", "same captions", "read+prep s", "encode s", "search s", "peak MiB"],
            rows,
        ),
        "",
    ]
    auto = data.get("automatic_choice")
    if auto:
        lines.append(f"Automatic choice here: **{auto['engine']}** ({auto['reason']}).")
    fastest = data.get("fastest_agreeing_engine")
    met = "met" if data.get("target_met") else "not met"
    lines.append(
        f"Fastest engine with ≥ {percent(data.get('target_agreement'))} identical captions: {fastest} at "
        f"{ratio(data.get('fastest_over_torch'))} torch fp32 (target {ratio(data.get('target_over_torch'))}: {met})."
    )
    findings = data.get("findings") or []
    if findings:
        lines += ["", "What blocks the target and what was tried:", "", *(f"- {finding}" for finding in findings)]
    return lines


def scale(data: dict[str, Any]) -> list[str]:
    rows = [
        [
            f"{s['images']:,}", s["submit_s"], s["end_to_end_s"], s["images_per_s"], s["rows_per_s"],
            s["cost_per_image_ms"], ratio(s.get("cost_ratio_to_first")), s["worker_rss_max_mb"],
            s["redis_used_memory_max_mb"],
        ]
        for s in data["sizes"]
    ]  # fmt: skip
    lines = [
        f"{data.get('workers')} workers through {data.get('broker')}, {data.get('store')} store; {data.get('model')}.",
        "",
        *table(
            ["images", "submit s", "end to end s", "images/s", "rows/s", "ms/image", "vs 1k", "worker MiB", "redis MiB"],
            rows,
        ),
    ]  # fmt: skip
    writer = data.get("writer_rows_per_s") or {}
    if writer:
        per_batch = ", ".join(f"{float(rows):,.0f} rows/s at {size}-row batches" for size, rows in writer.items())
        lines += ["", f"Caption writer alone on PostgreSQL: {per_batch} (target 20,000 at chunk-sized batches)."]
    lines += [
        "",
        f"Flat cost per image: {data.get('flat')}; the largest run's submit (walk + register) took "
        f"{data.get('submit_s_largest')} s.",
    ]
    return lines


def vlp_int8(data: dict[str, Any]) -> list[str]:
    rows = [
        [name, v["images_per_s"], ratio(v.get("ratio_to_fp32_median")), percent(v.get("same_images")),
         v.get("weights_in_memory_mb")]
        for name, v in data["variants"].items()
    ]  # fmt: skip
    config = data["config"]
    return [
        f"BLIP, {config['hidden']} hidden, {config['layers']} layers, {config['image_size']} px, beam "
        f"{config['beam_size']}, {config['threads']} threads; ratio = median over rounds.",
        "",
        *table(["path", "images/s", "× fp32", "same ids", "weights MiB"], rows),
    ]


def train_epoch(data: dict[str, Any]) -> list[str]:
    tf, pe = data["teacher_forcing"], data["prefix_expansion"]
    return table(
        ["scheme", "samples/epoch", "s/epoch", "ratio"],
        [
            ["teacher forcing", tf["samples_per_epoch"], tf["seconds_per_epoch"], "1.00×"],
            ["prefix expansion (the study's)", pe["samples_per_epoch"], pe["seconds_per_epoch"],
             ratio(data["prefix_over_teacher_forcing"])],
        ],
    )  # fmt: skip


def queue_overhead(data: dict[str, Any]) -> list[str]:
    redis = data["queued"]["redis"]
    return [
        f"{data['images']:,} images, {data['model']}.",
        "",
        *table(
            ["path", "median wall s", "queue overhead"],
            [
                ["in process", data["in_process"]["wall_median_s"], "-"],
                ["Redis + 1 worker", redis["wall_median_s"], percent(redis["queue_overhead_ratio"])],
            ],
        ),
    ]


def worker_rss(data: dict[str, Any]) -> list[str]:
    return table(
        ["images", "images/s", "RSS first quarter MiB", "RSS last quarter MiB"],
        [[data["images"], data["images_per_s"], data["rss_first_quarter_max_mb"], data["rss_last_quarter_max_mb"]]],
    )


def gpu_bulk(data: dict[str, Any]) -> list[str]:
    variants = data.get("variants", {})
    rows = []
    for name, v in variants.items():
        if not isinstance(v, dict):
            continue
        rows.append([
            name, v.get("images_per_s"), v.get("gpu_utilisation_mean") or v.get("gpu_util_mean"),
            percent(v.get("same_as_fp32") if isinstance(v.get("same_as_fp32"), float) else None),
            v.get("skipped") or v.get("error") or "",
        ])  # fmt: skip
    return [f"GPU: {data.get('gpu', '?')}.", "", *table(["variant", "images/s", "GPU util %", "same", "note"], rows)]


def overlap(data: dict[str, Any]) -> list[str]:
    at = data["at_default"]
    quality = [
        [
            kind,
            name,
            percent(v[row]["recall"]),
            percent(v[row]["precision"]),
            percent(v[pool]["precision"]),
            percent(v[row]["recall_by_variant"].get("crop")),
        ]
        for kind, v in at.items()
        for name, row, pool in (
            (f"now: 256 bits ≤ {data['default_threshold']}, keys ≤ {data['candidate_threshold']}", "two_stage", "two_stage_pool"),
            (f"before: 64 bits ≤ {data['before_threshold']}", "before", "before_pool"),
        )
    ]  # fmt: skip
    timing = [
        [row["n_left"], row["seconds"], row["all_pairs_seconds_extrapolated"], ratio(row["speedup_over_all_pairs"])]
        for row in data["timing"]["index"]
    ]
    return [
        "Near duplicates at the default (candidates from the 64-bit keys, verified with the 256-bit hash):",
        "",
        *table(
            ["distinct scenes drawn as", "hash", "recall", "precision", "pooled precision", "recall on 2-5 % crops"],
            quality,
        ),
        "",
        f"Hamming index (multi-index hashing, keys within {data['timing']['threshold']} bits, then 256-bit check) "
        "vs all pairs, hashes per side:",
        "",
        *table(["hashes", "index s", "all pairs s (extrapolated)", "speed-up"], timing),
    ]


def scst(data: dict[str, Any]) -> list[str]:
    setup, stats = data["setup"], data["test_cider_d"]
    total = setup["ce_epochs"] + setup["scst_epochs"]
    names = {"ce": "CE", "long_ce": f"CE for {total} epochs"}
    names.update({f"scst_{b}": f"CE + SCST ({b} baseline)" for b in setup["scst_baselines"]})
    groups = [g for g in names if g in stats]
    rows = [[run["seed"], *(run[g]["cider_d"] for g in groups)] for run in data["runs"]]
    verdict = "exceeds" if data["gain_exceeds_ce_spread"] else "does **not** exceed"
    return [
        f"cnn-lstm on viic-synth ({setup['train_images']} train / {setup['val_images']} val / "
        f"{setup['test_images']} test images, {setup['image_size']} px, {setup['backbone']}): "
        f"{setup['ce_epochs']} CE epochs, then {setup['scst_epochs']} SCST epochs ({setup['scst_samples']} samples, "
        f"lr {setup['scst_lr']:g}, best epoch by validation CIDEr-D); test CIDEr-D of greedy captions.",
        "",
        *table(["seed", *(names[g] for g in groups)], rows),
        "",
        *table(
            ["group", "mean", "std", "spread (max - min)"],
            [[names[g], stats[g]["mean"], stats[g]["std"], stats[g]["spread"]] for g in groups],
        ),
        "",
        f"{names[data['gain_of']]} minus CE, means: {data['gain']:+.3f}; it {verdict} the spread of the CE seeds "
        f"({stats['ce']['spread']:.3f}).",
    ]


def object_store(data: dict[str, Any]) -> list[str]:
    photos = data["photos"]
    rows = [
        [
            name, v["source"], v["read_ahead"], v.get("storage_concurrency") or "-", v["images_per_s"],
            ratio(v.get("ratio_to_baseline")), v.get("read_s"), v.get("infer_s"), v.get("client_cpu_ms_per_image"),
            v.get("server_cpu_ms_per_image"), percent(v.get("captions_equal_to_local")),
        ]
        for name, v in data["variants"].items()
    ]  # fmt: skip
    lines = [
        f"{photos['n']} photos of {photos['width']}×{photos['height']} (~{photos['mean_kib']} KiB) through "
        f"create_caption_job + run_chunk; {data.get('model')}; {data.get('server')}. Ratios to "
        f"{data.get('baseline')} (local disk, default read-ahead), medians of one run.",
        "",
        *table(
            ["variant", "source", "read-ahead", "concurrency", "images/s", "× baseline", "read s", "infer s",
             "CPU ms/photo", "server CPU ms/photo", "same captions"],
            rows,
        ),
    ]  # fmt: skip
    findings = data.get("findings") or []
    if findings:
        lines += ["", *(f"- {finding}" for finding in findings)]
    return lines


SUMMARIES: dict[str, Summary] = {
    "bulk_caption": bulk_caption,
    "scale": scale,
    "gpu_bulk": gpu_bulk,
    "vlp_int8": vlp_int8,
    "train_epoch": train_epoch,
    "queue_overhead": queue_overhead,
    "worker_rss": worker_rss,
    "overlap": overlap,
    "scst": scst,
    "object_store": object_store,
}


def summarize(name: str, data: dict[str, Any]) -> list[str]:
    """The benchmark's short table; a JSON of an older shape falls back to a note pointing at the file."""
    machine = data.get("machine", {})
    where = f"Measured {data.get('when', '?')} on {machine.get('cpu', '?')} ({machine.get('cores', '?')} cores)."
    try:
        body = SUMMARIES[name](data)
    except (KeyError, TypeError, ValueError) as exc:
        body = [f"(no summary for this result's shape: {type(exc).__name__} {exc}; see the JSON)"]
    return [where, "", *body, "", f"Raw numbers: `bench/results/{name}.json`."]
