"""`linkedout serve`'s settings (its options are generated from them) and the request limits
the OpenAPI schema states."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from linkedout.errors import SettingError
from linkedout.recommend.config import INDEX_HELP, NEW_ITEM_LIFT_HELP, IndexMode
from linkedout.service.graph_settings import GraphSettings
from linkedout.settings import at_least, check_choices, comma_list, finite, setting
from linkedout.storage.uri import storage_options_setting

MAX_K = 1000
"""Most items one ranking returns."""
MAX_HISTORY = 10_000
"""Most history ids one request may send (the model reads the last max_len of them)."""
MAX_EXCLUDE = 10_000
MAX_ID_LENGTH = 1024

CONFIG_ENV = "LINKEDOUT_SERVE_CONFIG"
"""How the serving process hands its settings to uvicorn's worker processes."""


@dataclass(frozen=True)
class ServeConfig:
    """How `linkedout serve` answers: where it listens, whom, and how much it takes."""

    run: Path = setting(argument=True, help="Run directory written by `linkedout train`.")
    host: str = "127.0.0.1"
    """Address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface)."""
    port: int = 8000
    """TCP port."""
    workers: int = 1
    """Server processes, each with its own copy of the model and catalog."""
    token_env: str | None = None
    """Environment variable holding a bearer token every ranking request must send
    (Authorization: Bearer TOKEN); unset: no token."""
    max_batch: int = 256
    """Most requests one POST /recommend/batch may hold."""
    max_body_kb: int = 1024
    """Largest request body accepted (KiB); larger ones get 413."""
    body_timeout: float = 10.0
    """Seconds a request body may take to arrive in full; a slower one (or one shorter than its
    Content-Length) gets 408 and its connection is closed."""
    max_in_flight: int = 64
    """Ranking requests one process holds at once, running or queued; more get 503 with
    Retry-After, so latency stays bounded over capacity."""
    poll_seconds: float = 1.0
    """How often to look for a new catalog.lance version (catalog add/remove)."""
    threads: int | None = None
    """Torch threads per process (default: cores / workers, less one for the process's HTTP
    loop, at least 1: a ranking's products are small, and on 2 cores a second torch thread
    slowed every request by taking the core the loop parses and answers on)."""
    new_item_lift: float | None = setting(default=None, help=NEW_ITEM_LIFT_HELP)
    index: IndexMode = setting(default="auto", help=INDEX_HELP)

    def __post_init__(self) -> None:
        check_choices(self)
        finite(self, "new_item_lift")
        if not 1 <= self.port <= 65535:
            raise SettingError("port", self.port, "use a TCP port in 1..65535")
        at_least(self, "workers", 1, "run at least 1 process")
        at_least(self, "max_batch", 1, "take at least 1 request per batch")
        at_least(self, "max_body_kb", 1, "accept at least 1 KiB")
        if not self.body_timeout > 0:
            raise SettingError("body_timeout", self.body_timeout, "give bodies more than 0 s")
        at_least(self, "max_in_flight", 1, "hold at least 1 request")
        if self.poll_seconds <= 0:
            raise SettingError("poll_seconds", self.poll_seconds, "use a positive interval")
        if self.threads is not None:
            at_least(self, "threads", 1, "use at least 1 thread")
        if self.token_env is not None and not os.environ.get(self.token_env):
            raise SettingError(
                "token_env", self.token_env, "is not set, or empty: export the token in it first"
            )

    def token(self) -> str | None:
        return os.environ[self.token_env] if self.token_env else None

    def to_env(self) -> str:
        return json.dumps({**asdict(self), "run": str(self.run)})

    @classmethod
    def from_env(cls) -> ServeConfig:
        data = json.loads(os.environ[CONFIG_ENV])
        return cls(**{**data, "run": Path(data["run"])})


def _parse_items(text: str) -> tuple[str, ...]:
    items = comma_list(text)
    if not items:
        raise SettingError("items", text, "lists no item ids: pass them as ID,ID,...")
    return items


@dataclass(frozen=True)
class CatalogAddConfig:
    """Which new items `linkedout catalog add` embeds into a run's catalog."""

    run: Path = setting(argument=True, help="Run directory written by `linkedout train`.")
    features: str = setting(flag="features")
    """Feature dataset holding the new items (path or URI), extracted like the run's own
    features (same manifest); items the catalog already holds are skipped."""
    storage_options: dict[str, str] = storage_options_setting()


@dataclass(frozen=True)
class CatalogPublishConfig:
    """Where `linkedout catalog publish` copies a run's catalog, for servers on other hosts."""

    run: Path = setting(argument=True, help="Run directory written by `linkedout train`.")
    uri: str = setting(
        argument=True,
        help="Where the catalog goes: an empty object-store prefix (s3://bucket/path) or a new "
        "folder. The run then reads and changes its catalog there.",
    )
    storage_options: dict[str, str] = storage_options_setting()


@dataclass(frozen=True, kw_only=True)
class CatalogIndexConfig(GraphSettings):
    """How `linkedout catalog index` builds a run's graph index (an approximate top k for
    catalogs of hundreds of thousands of items and more)."""

    run: Path = setting(argument=True, help="Run directory written by `linkedout train`.")
    threads: int | None = None
    """Threads linking items in (default: every core)."""
    new_item_lift: float | None = setting(
        default=None,
        help="The --new-item-lift the servers will rank with (default: the run's): above 0 "
        "the graph carries the lift as one more coordinate and serves any lift; built at 0, it "
        "leaves items a server lifts to be scanned exactly beside it.",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        finite(self, "new_item_lift")
        if self.threads is not None:
            at_least(self, "threads", 1, "use at least 1 thread")

    def settings(self) -> GraphSettings:
        return GraphSettings(**{f.name: getattr(self, f.name) for f in fields(GraphSettings)})


@dataclass(frozen=True)
class CatalogRemoveConfig:
    """Which items `linkedout catalog remove` withdraws from a run's catalog."""

    run: Path = setting(argument=True, help="Run directory written by `linkedout train`.")
    items: tuple[str, ...] = setting(cli_type=str, parse=_parse_items)
    """Item ids to stop recommending: ID,ID,..."""
