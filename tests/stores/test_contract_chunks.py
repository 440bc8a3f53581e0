"""The chunk rows contract: which worker ran which positions, kept with the flush, on every store kind."""

from __future__ import annotations

from store_kit import StoreFactory, make_batches, make_record

from pylo.stores.base import FINISHED, ChunkRow, Flush, Store


def flush_of(batch_no: int, finished: int, chunks: list[ChunkRow]) -> Flush:
    return Flush(
        states={batch_no: bytes([FINISHED]) * 4},
        failures=[],
        results=[],
        total=8,
        finished=finished,
        failed=0,
        chunks=chunks,
    )


def test_chunk_rows_come_back_by_first_position_whichever_flush_wrote_them(store_factory: StoreFactory) -> None:
    store = store_factory()
    store.create_execution(make_record("e"))
    store.create_execution(make_record("other"))
    store.add_batches("e", make_batches("e", [4, 4]))
    assert store.read_chunks("e") == []
    store.record_flush("e", flush_of(1, 4, [ChunkRow(6, 7, 1), ChunkRow(4, 5, 0)]))
    store.record_flush("e", flush_of(0, 8, [ChunkRow(0, 3, 2)]))
    store.record_flush("e", flush_of(0, 8, []))  # a flush with no new outcomes
    expected = [ChunkRow(0, 3, 2), ChunkRow(4, 5, 0), ChunkRow(6, 7, 1)]
    assert store.read_chunks("e") == expected
    assert store.read_chunks("other") == []
    assert store_factory().read_chunks("e") == expected


def test_a_store_that_keeps_no_chunk_rows_reads_none(store: Store) -> None:
    store.create_execution(make_record("e"))
    assert Store.read_chunks(store, "e") == []
