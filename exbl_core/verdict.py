"""Did a refinement unlearn the shortcut? One computed verdict for every results view.

AP alone can rise while the decision still comes from the confounder (docs/design.md
section 8), so the verdict reads the shortcut test. With an oracle (the same model
trained with child anatomy independent of the class) it measures how much of the
oracle's shortcut-test accuracy a model recovers; without one it can only compare
the shortcut gap before and after, and says that the full verdict needs the oracle.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

MIN_TEST_ACCURACY = 0.90  # a model that unlearns by forgetting the disease has not unlearned
UNLEARNED = 0.5  # share of the oracle's shortcut-test accuracy recovered
PARTLY = 0.2
GAP_HALVED = 0.5  # without an oracle: the gap must fall by at least half
MIN_ROOM = 0.05  # shortcut-test accuracy the oracle (or, without one, the test split) must be ahead by
NOTHING_TO_UNLEARN = "nothing to unlearn"


@dataclass(frozen=True)
class Verdict:
    """``label`` is one of: unlearned, partly, not unlearned (with an oracle);
    shortcut reduced, shortcut still used (without one); nothing to unlearn (either way,
    when the shortcut test leaves no room to improve). ``sentence`` says why."""

    label: str
    recovered: float | None
    sentence: str

    @property
    def success(self) -> bool:
        """True only for a result that a results view may colour as an improvement."""
        return self.label in ("unlearned", "shortcut reduced")

    def to_dict(self) -> dict:
        return asdict(self)


def recovered(shortcut_acc: float, unrefined_shortcut_acc: float, oracle_shortcut_acc: float) -> float | None:
    """``(acc_st(model) - acc_st(unrefined)) / (acc_st(oracle) - acc_st(unrefined))``.

    ``None`` when the oracle is less than ``MIN_ROOM`` ahead of the unrefined model on
    the shortcut test: then there is nothing to recover, and dividing by that sliver
    would turn a few images' noise into a "recovery" of 100% or more.
    """
    room = oracle_shortcut_acc - unrefined_shortcut_acc
    if room < MIN_ROOM:
        return None
    return (shortcut_acc - unrefined_shortcut_acc) / room


def shortcut_verdict(unrefined: dict, model: dict, oracle: dict | None = None) -> Verdict:
    """The verdict for ``model`` against ``unrefined`` (and ``oracle`` when there is one).

    Each argument is one model's metrics per split, as in metrics.json:
    ``{"test": {"accuracy": ...}, "shortcut_test": {"accuracy": ...}, ...}``.
    """
    test_acc = model["test"]["accuracy"]
    st_before, st_after = unrefined["shortcut_test"]["accuracy"], model["shortcut_test"]["accuracy"]
    kept = test_acc >= MIN_TEST_ACCURACY
    accuracy_note = "" if kept else f", but test accuracy is {test_acc:.3f} (below {MIN_TEST_ACCURACY:.2f})"
    if oracle is not None:
        st_oracle = oracle["shortcut_test"]["accuracy"]
        share = recovered(st_after, st_before, st_oracle)
        if share is None:
            return Verdict(
                NOTHING_TO_UNLEARN,
                None,
                f"the oracle is hardly better on the shortcut test ({st_before:.3f}, oracle {st_oracle:.3f}): the unrefined "
                "model barely uses the shortcut, or no better model could be learned without it",
            )
        label = "unlearned" if kept and share >= UNLEARNED else "partly" if kept and share >= PARTLY else "not unlearned"
        sentence = (
            f"recovered {share:.0%} of the oracle's shortcut-test accuracy "
            f"({st_before:.3f} -> {st_after:.3f}, oracle {st_oracle:.3f}){accuracy_note}"
        )
        return Verdict(label, share, sentence)
    gap_before = unrefined["test"]["accuracy"] - st_before
    gap_after = test_acc - st_after
    if gap_before < MIN_ROOM:
        sentence = (
            f"the unrefined model hardly uses the shortcut (shortcut gap {gap_before:.3f} before refinement); "
            "the full verdict needs the oracle"
        )
        return Verdict(NOTHING_TO_UNLEARN, None, sentence)
    halved = gap_after <= (1 - GAP_HALVED) * gap_before
    label = "shortcut reduced" if halved and kept else "shortcut still used"
    sentence = f"shortcut gap {gap_before:.3f} -> {gap_after:.3f}{accuracy_note}; the full verdict needs the oracle"
    return Verdict(label, None, sentence)
