"""What counts as a transient database error: the database is restarting, a connection was cut, or two
writers deadlocked. Loops that meet one back off and try the same work again; anything else is a bug."""

from __future__ import annotations

from typing import Final

import asyncpg

#: A restarting server raises class 57 (admin/crash shutdown, "cannot connect now") and, on a connection cut
#: mid-operation, asyncpg's InternalClientError; letting those through killed loops for good (make chaos).
TRANSIENT_DB: Final = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.OperatorInterventionError,
    asyncpg.InternalClientError,
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    OSError,
    TimeoutError,
)
