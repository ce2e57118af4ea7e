"""The projector role: ``qlara.delivery-events`` → one Postgres transaction per batch → offsets.

``consumer.py`` is the loop; the projection itself is ``store/projection.py`` (SQL) and
``domain/projection.py`` (rules); ``outbox.py`` relays transitions to ``qlara.status-changes``.
"""
