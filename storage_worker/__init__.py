"""storage_worker: ``traces.routed`` → PostgreSQL ``traces`` (SPEC §6, §7).

One batch, top to bottom (``step.StoreStep``)::

    records ─decode─▶ TraceRow | dead letter        (rows.py, pure)
            ─collapse─▶ one version per trace        (upsert.py, pure)
            ─COPY + INSERT … ON CONFLICT─▶ outcomes   (write.py, one transaction; poison rows bisected out)
            ─produce, await acks─▶ traces.dlq         (dead_letters.py)
            ─note keys─▶ LastUsedTracker              (last_used.py, flushed every few seconds)
    then shared.runtime.worker.run_batches commits the offsets.
"""
