"""qlara-events: the delivery-event backbone behind the Qlara Platform API.

Where things happen (docs/architecture.md has the full map):
``ingress/`` a provider callback enters → ``providers/`` verifies and normalises it → Kafka →
``projector/`` + ``store/projection.py`` make it a status → ``dispatcher/`` sends it out as a webhook;
``api/`` serves the Platform API from Postgres.
"""

__version__ = "0.1.0"
