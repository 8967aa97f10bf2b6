"""What every handler of one app needs: the engine, the names it answers to, its metrics, its gate."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional

from ..engine.metrics import EngineMetrics
from .errors import overloaded


class Admission:
    """Caps the sequences in flight through this server (running + queued). Past the cap a request is
    answered 503 + Retry-After at once instead of queueing without bound. Used only on the event loop
    thread, so a plain counter is enough."""

    def __init__(self, limit: Optional[int]):
        self.limit = limit
        self.active = 0
        self.rejected = 0

    def acquire(self, weight: int) -> None:
        # A single request larger than the whole cap still runs when nothing else does.
        if self.limit is not None and self.active > 0 and self.active + weight > self.limit:
            self.rejected += 1
            raise overloaded(f"the server is at capacity ({self.active} sequences in flight, limit "
                             f"{self.limit}); retry later, or start it with a larger --max-queued-requests")
        self.active += weight

    def release(self, weight: int) -> None:
        self.active = max(self.active - weight, 0)


@dataclass
class ServerState:
    engine: Any
    served_model_name: str
    metrics: EngineMetrics
    admission: Admission
    api_key: Optional[str] = None
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def max_context(self) -> int:
        return int(self.engine.max_context)

    def model_name(self, requested: Optional[str]) -> str:
        """The name a response reports: what the client asked for (SGLang serves one model under any
        name, as the seed's curl relies on), else the served name."""
        return requested or self.served_model_name
