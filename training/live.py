"""Redeploy's live phase: serve the new version as a canary or in the shadow, watch /metrics, decide.

The offline gate scores the new version on a held-out test set; production traffic is
another matter. So after the gate the new version becomes the model's CANDIDATE: with
--canary P it answers P% of the requests, with --shadow it scores every request beside
the served version without answering. For --watch the live per-version series on
/metrics (service/http/metrics.py) are read every few seconds and compared:

- canary: the candidate's error rate may not exceed the served version's by more than
  --max-error-rate-increase; its p99 compute time may not exceed the served version's by
  more than --max-p99-increase (relative);
- shadow: the share of items whose label differs (classifiers), or the mean absolute
  difference of the values (regressors), may not exceed --max-disagreement /
  --max-difference;
- and the candidate must have seen --min-requests requests (canary) or items (shadow).

A criterion that fails once enough traffic is in ends the watch at once with a roll back;
otherwise at the end of the period the candidate is promoted. Either way CANDIDATE is
cleared; Ctrl-C, SIGTERM or any failure clears it too and CURRENT keeps serving.
"""

from __future__ import annotations

import argparse
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

POLL_S = 5.0  # how often the watch reads /metrics
DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h)?$")
UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration(text: str) -> float:
    """'10m', '30s', '1.5h', '90' (seconds) -> seconds."""
    match = DURATION_RE.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 30s, 10m, 1h)")
    return float(match.group(1)) * UNITS[match.group(2) or "s"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    live = parser.add_argument_group("live phase (after the offline gate)")
    mode = live.add_mutually_exclusive_group()
    mode.add_argument("--canary", type=float, metavar="P", help="serve the new version to P%% of the requests, watch, then decide")
    mode.add_argument(
        "--shadow", action="store_true", help="score every request with the new version too (answers from CURRENT), watch, decide"
    )
    live.add_argument("--watch", type=duration, default=duration("10m"), help="how long to watch the live metrics (default: %(default)ss)")
    live.add_argument(
        "--min-requests",
        type=int,
        default=100,
        help="candidate requests (canary) or items (shadow) needed to decide (default: %(default)s)",
    )
    live.add_argument(
        "--max-error-rate-increase", type=float, default=0.01, help="canary: candidate error rate minus current's (default: %(default)s)"
    )
    live.add_argument(
        "--max-p99-increase", type=float, default=0.5, help="canary: relative increase of p99 compute time (default: %(default)s)"
    )
    live.add_argument(
        "--max-disagreement", type=float, default=0.05, help="shadow, classifiers: share of labels that differ (default: %(default)s)"
    )
    live.add_argument(
        "--max-difference", type=float, default=1.0, help="shadow, regressors: mean |candidate - current| (default: %(default)s)"
    )


# ---------------------------------------------------------------- reading /metrics


@dataclass
class VersionStats:
    """One version's series, as read from /metrics at one moment (counters since the server started)."""

    ok: float = 0.0
    errors: float = 0.0
    buckets: dict[float, float] | None = None  # compute-time histogram: upper bound -> cumulative count
    shadow_items: float = 0.0
    disagreements: float = 0.0
    difference_sum: float = 0.0

    def minus(self, before: VersionStats) -> VersionStats:
        buckets = {le: n - (before.buckets or {}).get(le, 0.0) for le, n in (self.buckets or {}).items()}
        return VersionStats(
            self.ok - before.ok,
            self.errors - before.errors,
            buckets,
            self.shadow_items - before.shadow_items,
            self.disagreements - before.disagreements,
            self.difference_sum - before.difference_sum,
        )

    @property
    def requests(self) -> float:
        return self.ok + self.errors

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def p99(self) -> float:
        """The smallest histogram bound under which 99% of the requests' compute time fell (nan without data)."""
        ordered = sorted((self.buckets or {}).items())
        total = ordered[-1][1] if ordered else 0.0
        return next((le for le, n in ordered if n >= 0.99 * total), math.nan) if total else math.nan


def read_stats(metrics_text: str, name: str, versions: Iterable[int]) -> dict[int, VersionStats]:
    """Each version's stats from a Prometheus text exposition (all workers summed by BentoML's collector)."""
    stats = {v: VersionStats(buckets={}) for v in versions}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("model") != name or not labels.get("version", "").isdecimal() or int(labels["version"]) not in stats:
                continue
            _add(stats[int(labels["version"])], sample.name, labels, sample.value)
    return stats


def _add(stats: VersionStats, metric: str, labels: dict[str, str], value: float) -> None:
    if metric == "modelserve_requests_total":
        if labels.get("outcome") == "ok":
            stats.ok += value
        elif labels.get("outcome") == "error":
            stats.errors += value
    elif metric == "modelserve_compute_seconds_bucket" and stats.buckets is not None:
        bound = float(labels["le"])
        stats.buckets[bound] = stats.buckets.get(bound, 0.0) + value
    elif metric == "modelserve_shadow_items_total":
        stats.shadow_items += value
    elif metric == "modelserve_shadow_disagreements_total":
        stats.disagreements += value
    elif metric == "modelserve_shadow_abs_difference_sum":
        stats.difference_sum += value


# ---------------------------------------------------------------- the decision


@dataclass
class Verdict:
    decided: bool  # enough traffic seen, or a criterion failed
    promote: bool
    reasons: list[str]


def judge(args: argparse.Namespace, current: VersionStats, candidate: VersionStats, predicts_value: bool) -> Verdict:
    """Compare the two versions' stats over the watch so far against the criteria."""
    if args.shadow:
        return _judge_shadow(args, candidate, predicts_value)
    seen = candidate.requests
    failed = []
    increase = candidate.error_rate - current.error_rate
    if candidate.errors and increase > args.max_error_rate_increase:
        failed.append(
            f"error rate {candidate.error_rate:.2%} vs {current.error_rate:.2%} (+{increase:.2%} > +{args.max_error_rate_increase:.2%})"
        )
    p99_new, p99_old = candidate.p99(), current.p99()
    if seen >= args.min_requests and p99_old > 0 and p99_new > p99_old * (1 + args.max_p99_increase):
        failed.append(f"p99 compute {p99_new * 1000:g} ms vs {p99_old * 1000:g} ms (more than +{args.max_p99_increase:.0%})")
    summary = (
        f"candidate {seen:,.0f} requests, {candidate.error_rate:.2%} errors; current {current.requests:,.0f}, {current.error_rate:.2%}"
    )
    if failed and (seen >= args.min_requests or candidate.errors >= args.min_requests / 10):
        return Verdict(True, False, [*failed, summary])
    return Verdict(seen >= args.min_requests, True, [summary])


def _judge_shadow(args: argparse.Namespace, candidate: VersionStats, predicts_value: bool) -> Verdict:
    items = candidate.shadow_items
    if not items:
        return Verdict(False, False, ["no shadow items yet"])
    if predicts_value:
        value, limit, what = candidate.difference_sum / items, args.max_difference, "mean |candidate - current|"
    else:
        value, limit, what = candidate.disagreements / items, args.max_disagreement, "labels that differ"
    line = f"{what} {value:.4g} over {items:,.0f} shadow items (limit {limit:g}); candidate errors {candidate.errors:,.0f}"
    if items >= args.min_requests and (value > limit or candidate.errors):
        return Verdict(True, False, [line])
    return Verdict(items >= args.min_requests, True, [line])


def watch(
    args: argparse.Namespace,
    read_metrics: Callable[[], str],
    name: str,
    current: int,
    candidate: int,
    predicts_value: bool,
    say: Callable[[str], None],
) -> Verdict:
    """Read /metrics every POLL_S for args.watch seconds; stop early when a criterion fails with enough traffic."""
    start = read_stats(read_metrics(), name, (current, candidate))
    started = time.monotonic()
    verdict = Verdict(False, False, ["no traffic read yet"])
    while True:
        time.sleep(min(POLL_S, max(0.0, args.watch - (time.monotonic() - started))))
        now = read_stats(read_metrics(), name, (current, candidate))
        verdict = judge(args, now[current].minus(start[current]), now[candidate].minus(start[candidate]), predicts_value)
        elapsed = time.monotonic() - started
        say(f"watch {elapsed:,.0f}/{args.watch:,.0f} s: {'; '.join(verdict.reasons)}")
        if (verdict.decided and not verdict.promote) or elapsed >= args.watch:
            return verdict
