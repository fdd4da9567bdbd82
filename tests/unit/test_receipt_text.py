"""How a receipt is read back from the segments its time buckets hold (publisher.receipts.join and parse)."""

from __future__ import annotations

from publisher.receipts import DEAD_LETTERED, DUPLICATE, PUBLISHED, QUEUED, Receipt, join, parse


def receipt_of(segments: list[str]) -> Receipt:
    text = join(segments)
    assert text is not None
    return parse(event_id="e", text=text)


def test_tokens_written_in_later_buckets_join_the_header() -> None:
    receipt = receipt_of(["key1:1700000000000|d:a:0:5", "|d:b:1:7|p"])
    assert receipt.status == PUBLISHED
    assert receipt.owner == "key1"
    assert receipt.accepted_at == 1_700_000_000
    assert [(d.topic, d.partition, d.offset) for d in receipt.deliveries] == [("a", 0, 5), ("b", 1, 7)]


def test_a_later_admission_of_the_same_id_starts_afresh() -> None:
    text = join(["key1:1000|d:a:0:5|p", "|x:a:9:permanent_error", "key2:2000"])
    assert text == "key2:2000"
    assert parse(event_id="e", text=text).status == QUEUED


def test_a_duplicate_note_never_hides_the_event_own_receipt() -> None:
    text = join(["key1:1000|d:a:0:5", "key2:2000|=other", "|x:a:9:retries_exhausted"])
    assert text == "key1:1000|d:a:0:5|x:a:9:retries_exhausted"
    assert parse(event_id="e", text=text).status == DEAD_LETTERED


def test_a_duplicate_note_alone_is_the_receipt() -> None:
    receipt = receipt_of(["key2:2000|=original-id"])
    assert (receipt.status, receipt.duplicate_of) == (DUPLICATE, "original-id")


def test_tokens_without_a_header_are_a_receipt_no_key_may_read() -> None:
    receipt = receipt_of(["|d:a:0:5", "|x:a:9:retries_exhausted"])
    assert receipt.status == DEAD_LETTERED
    assert receipt.owner == ""
    assert not receipt.readable_by("key1") and not receipt.readable_by("")
    assert join([]) is None


def test_readers_added_later_may_read() -> None:
    text = join(["key1:1000|p", "|r:key2"])
    assert text is not None
    receipt = parse(event_id="e", text=text)
    assert receipt.readable_by("key2") and receipt.readable_by("key1") and not receipt.readable_by("key3")
