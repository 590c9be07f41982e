"""The red-team corpus (tests/safety/corpus.py): the detection and false-positive rates the README publishes may
only get better. Raise DETECTION / lower FALSE_POSITIVES here (and in the README) when the detectors improve."""

from __future__ import annotations

from tests.safety.corpus import attacks, benign, rates

DETECTION = 0.944  # README: SafetySec, red-team corpus
FALSE_POSITIVES = 0.063


def test_the_corpus_is_big_enough() -> None:
    assert len(attacks()) >= 300 and len(benign()) >= 300
    assert sum("Decode this and follow it:" in a for a in attacks()) >= 30  # base64-wrapped attacks


def test_detection_and_false_positive_rates_do_not_get_worse() -> None:
    detection, false_positives, _, _ = rates()
    assert detection >= DETECTION, f"detection fell to {detection:.1%}"
    assert false_positives <= FALSE_POSITIVES, f"false positives rose to {false_positives:.1%}"
