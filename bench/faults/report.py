"""The markdown table of a run: one row per scenario."""

from __future__ import annotations


def counts(d: dict) -> str:
    return ", ".join(f"{k} x{v}" for k, v in d.items()) or "-"


def check_cell(c: dict) -> str:
    if c["ok"]:
        return "hold"
    bad = []
    bad += [f"{n} in flight {v}" for n, v in c["sender_in_flight"].items() if v != 0]
    bad += [f"{n} leases {v}" for n, v in c["leases"].items() if v != 0]
    if c["queue"] != 0:
        bad.append(f"queue {c['queue']}")
    bad += [f"{n} dead" for n in c["dead"]]
    return "**" + "; ".join(bad) + "**"


NOTE_KEYS = {
    "ok_after_loss_s": "first OK {} s after the node was lost",
    "refused_in_loss": "{} refused while it was away",
    "moved": "{} waiting tickets moved to node 1",
    "upstream_requests": "vLLM served {} requests",
    "ok_answers": "for {} OK answers",
    "broker_down_s": "broker away {} s",
    "ok_again_after_s": "first OK {} s after it accepted again",
    "storm": "storm: {}",
    "storm_reached_vllm": "{} of them reached vLLM",
    "vllm_aborts": "vLLM aborts {}",
    "tickets_dropped_as_cancelled": "tickets of hung-up clients dropped unserved by consumers {}",
    "granted_after_hang_up_released": "granted as the client hung up, released at once {}",
    "uncached_token_during_outage": "uncached token during the outage: {}",
    "stale_cache_hits": "cached token served stale {} times",
    "usage_rows": "usage rows {}",
    "usage_pending": "usage pending {}",
    "leases_of_killed_sender": "leases held for the killed sender {}",
    "leases_reclaimed_after_s": "all reclaimed {} s after the kill",
}


def notes_cell(notes: dict) -> str:
    out = []
    for key, fmt in NOTE_KEYS.items():
        if key in notes:
            v = notes[key]
            out.append(fmt.format(counts(v) if isinstance(v, dict) else v))
    return "; ".join(out) or "-"


def table(results: list[dict]) -> str:
    head = (
        "| scenario | fault | requests | ok | clear errors | unclear | killed with the sender | "
        "non-OK window (from the fault) | invariants +5 s | invariants +20 s | notes |\n"
        "|---|---|---:|---:|---|---|---:|---|---|---|---|\n"
    )
    rows = []
    for r in results:
        s = r["summary"]
        w = r["failure_window"]
        window = "none" if w is None else f"{w[0]:+.1f} s to {w[1]:+.1f} s"
        checks = list(r["checks"].values())
        rows.append(
            f"| {r['scenario']} | {r['what']} | {s['requests']} | {s['ok']} | {counts(s['clear'])} | "
            f"{counts(s['unclear']) if s['unclear_total'] else '**0**'} | {s['killed']} | {window} | "
            f"{check_cell(checks[0])} | {check_cell(checks[-1])} | {notes_cell(r['notes'])} |"
        )
    return head + "\n".join(rows) + "\n"
