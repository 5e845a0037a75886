"""stage2_generated_results.json: the summary, the results (shared/relations/result.py) and what failed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared.jsonio import write_json_atomic
from shared.keys import normalize_image_id
from shared.messages import RELATIONS_STAGE
from shared.redaction import redact_values
from shared.relations.result import report_record
from shared.relations.run_settings import LOCAL_ENGINE, RelationsRunSettings
from shared.store import RunStore

# What preparation dropped and merged; a run registered before it was counted: nothing said.
NOTHING_PREPARED = {"dropped_no_relation": 0, "merged_repeated_predicates": 0}


def relations_report(store: RunStore) -> dict[str, Any]:
    meta = store.meta()
    run = RelationsRunSettings.from_record(meta, store.run_id)
    items = store.items(RELATIONS_STAGE)
    done = store.done(RELATIONS_STAGE)
    failed = store.failed(RELATIONS_STAGE)
    ordered = sorted((k for k in done if k in items), key=lambda k: items[k].get("order", 0))
    results = [report_record(done[k]) for k in ordered]
    stats = store.stats(RELATIONS_STAGE)
    summary = {
        "total_pairs": len(results),
        "total_images": len({normalize_image_id(r["image_id"]) for r in results}),
        "top_k_relations": run.top_k,
        "generation_max_tokens": run.max_new_tokens,
        "generation_temperature": run.temperature,
        "num_gpus": sum("/cuda:" in d for d in store.devices()),
        "workers_per_gpu": run.workers_per_gpu,
        "run_id": store.run_id,
        "model": run.model,
        "backend": run.relations_backend,
        "engine": "" if run.endpoint else LOCAL_ENGINE,
        # Descriptions cut at generation_max_tokens (an endpoint's finish_reason "length"; the
        # local engine does not flag them).
        "truncated_descriptions": sum(bool(d.get("truncated")) for r in results for d in r["stage2_generated"]),
        "failed_pairs": len(failed),
        "pending_pairs": len(items) - len(done) - len(failed),
        # Stage-1 candidates left out of the top K (README, The relations job, Preparation).
        **meta.get("preparation", NOTHING_PREPARED),
    }
    if run.bench_token_budgets:
        # Lengths drawn for a benchmark (config/bench_token_budgets.py): not a real run's text.
        summary["bench_token_budgets"] = run.bench_token_budgets
    if run.endpoint:
        summary["endpoint_url"] = run.relations_endpoint_url  # stored without its password
        summary["endpoint_retries"] = stats.get("endpoint_retries", 0)
    failures = [{"key": k, "reason": v["reason"], "attempts": v["attempts"]}
                for k, v in sorted(failed.items())]
    return {"summary": summary, "results": results, "failed": failures}


def write_relations_report(store: RunStore, output: Path) -> dict[str, Any]:
    report = redact_values(relations_report(store))  # stored by earlier versions, or by hand
    write_json_atomic(output, report)
    return report
