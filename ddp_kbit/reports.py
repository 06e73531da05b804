"""What a command prints when it ends: one summary line per report."""
from __future__ import annotations


def summary_line(report: dict) -> str:
    mode = report["mode"]
    if mode == "experiment":
        failed = f"; {report['failed']} failed (see results.csv)" if report["failed"] else ""
        return "\n".join([report["table"], "", *report["verdicts"], "",
                          f"{report['rows']} measurements{failed}; study: {report['files']['report_md']}"])
    if mode == "inspect":
        return "\n".join(report["findings"]["summary"])
    if mode == "evaluate":
        pred = report["predictions"]
        return (f"{report['topic']}: test accuracy {report['test_accuracy']:.4f}, test loss {report['test_loss']:.4f} "
                f"on {report['records']} records; confusion matrix {report['confusion_png']}"
                + (f"; {pred['written']} predictions written to {pred['topic']} ({pred['already_there']} already "
                   "there)" if pred else ""))
    if mode == "describe":
        f = report["findings"]
        bad = ", ".join(f"{n} {r}" for r, n in f["bad"].items()) or "none"
        return (f"{f['topic']}: {f['good']} of {f['records_read']} records read are {f['shape']} {f['dtype']} "
                f"samples of {f['num_classes']} classes; bad: {bad}; manifest "
                f"{'written' if f['manifest_written'] else 'not written'}")
    if mode == "publish":
        return "\n".join(publish_line(split, r) for split, r in report["results"].items())
    if "windows" in report:
        return follow_line(report)
    last, final = report["epochs"][-1] if report["epochs"] else {}, report["final"]
    return (f"trained {len(report['epochs'])} epoch(s) on {report['world_size']} process(es): test accuracy "
            f"{final['test_accuracy']:.4f}, test loss {final['test_loss']:.4f}; last epoch "
            f"{last.get('samples_per_s', 0):,.0f} samples/s, data wait {100 * last.get('data_wait_fraction', 0):.1f}%; "
            f"model {final['model']}")


def publish_line(split: str, r: dict) -> str:
    if "seconds" in r:
        return (f"published {r['records']} records to {r['topic']} in {r['seconds']:.2f}s: "
                f"{r['records_per_s']:,.0f} records/s, {r['mb_per_s']:.1f} MB/s")
    if r.get("manifest", True) is None:
        return f"published {r['records']} records to {r['topic']} (no pass completed: no manifest)"
    return f"{split}: {r['topic']} holds {r['records']} records"


def follow_line(report: dict) -> str:
    w = report["windows"]
    last = w[-1] if w else {}
    behind = (last.get("lag") or {}).get("records_behind_at_end")
    stopped = report["spark"].get("stopped_by")
    return (f"followed {report['config']['data'].get('train_topic')} for {len(w)} window(s) on "
            f"{report['world_size']} process(es): {sum(x['new_records'] for x in w)} new records trained once "
            f"each{', stopped by ' + stopped if stopped else ''}; last window "
            f"{last.get('samples_per_s', 0):,.0f} samples/s, prequential accuracy "
            f"{last.get('prequential_accuracy') or 0:.4f}, records behind {behind}")
