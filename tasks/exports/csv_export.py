"""The CSV export: study-, series- and instance-level classifications and grades, one row per finding."""

import csv
import io

COLUMNS = ["task", "study_uid", "series_uid", "sop_instance_uid", "label", "kind", "value", "concept_scheme",
           "concept_code", "concept_meaning", "consensus_method"]


def classifications_csv(tasks: list) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    for task in tasks:
        for finding in task.consensus.findings:
            if finding.get("kind") not in ("classification", "ordinal"):
                continue
            concept = finding.get("concept", {})
            series_uid = finding.get("series_uid") or (task.series.series_uid if task.series_id else "")
            writer.writerow([task.pk, task.study.study_uid, series_uid, finding.get("sop_instance_uid", ""),
                             finding["label"], finding["kind"], finding.get("value", ""), concept.get("scheme", ""),
                             concept.get("code", ""), concept.get("meaning", ""), task.consensus.method])
    return out.getvalue().encode()
