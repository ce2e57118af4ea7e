"""Typed settings, parsed once from the environment and passed in (nothing else reads ``os.environ``).

Every variable is documented in docs/configuration.md. Defaults point at the local infrastructure that
``make run`` starts, so every command works on a development machine with nothing set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Final

from qlara_events.errors import QlaraError

VONAGE_METHODS: Final = ("md5hash", "md5", "sha1", "sha256", "sha512")

#: Development secrets used by ``serve --dev`` (``make run``) for providers whose secret is unset.
#: Never used unless asked for; documented in docs/configuration.md so curl examples can sign with them.
DEV_SECRETS: Final[Mapping[str, str]] = {
    "QLARA_INGEST_SECRET": "whsec_ZGV2LWluZ2VzdC1zZWNyZXQtcWxhcmEtZXZlbnRzLTAx",
    "QLARA_TWILIO_AUTH_TOKEN": "dev-twilio-auth-token",
    "QLARA_VONAGE_SIGNATURE_SECRET": "dev-vonage-signature-secret",
    "QLARA_INFOBIP_TOKEN": "dev-infobip-token",
    "QLARA_WHATSAPP_APP_SECRET": "dev-whatsapp-app-secret",
    "QLARA_WHATSAPP_VERIFY_TOKEN": "dev-whatsapp-verify-token",
    "QLARA_RBM_CLIENT_TOKEN": "dev-rbm-client-token",
    "QLARA_JASMIN_TOKEN": "dev-jasmin-token",
    "QLARA_URL_SIGNING_KEY": "dev-url-signing-key-not-for-production",
    "QLARA_SOCIAL_TOKEN_KEY": "ZGV2LXNvY2lhbC10b2tlbi1rZXktMzItYnl0ZXMhISE=",
}

#: Svix's schedule: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (each ±20 % jitter).
DEFAULT_RETRY_SCHEDULE: Final = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)

DEFAULT_PRICES: Final[Mapping[str, float]] = {"SMS": 0.045, "RCS": 0.035, "WHATSAPP": 0.06}

#: Qlara's documented plans: production 1,000 requests/min with 50/s bursts; trial 100/min, 10/s.
DEFAULT_PLANS: Final[Mapping[str, tuple[int, int]]] = {"production": (1000, 50), "trial": (100, 10)}

DEFAULT_DATABASE_URL: Final = "postgresql://postgres@127.0.0.1:55432/qlara"
DEFAULT_KAFKA_BOOTSTRAP: Final = "127.0.0.1:9092"


class ConfigError(QlaraError):
    """An environment variable has a value the service cannot use."""


@dataclasses.dataclass(frozen=True, slots=True)
class Topics:
    """Kafka topic names; a prefix isolates test runs that share one broker."""

    prefix: str = ""

    @property
    def delivery_events(self) -> str:
        """Canonical events accepted by the ingress."""
        return f"{self.prefix}qlara.delivery-events"

    @property
    def status_changes(self) -> str:
        """Real status transitions, produced by the projector for the dispatcher."""
        return f"{self.prefix}qlara.status-changes"

    @property
    def ingest_rejected(self) -> str:
        """Authenticated payloads that failed validation, kept raw with their headers."""
        return f"{self.prefix}qlara.ingest-rejected"

    @property
    def send_requests(self) -> str:
        """Work for the upstream sending services."""
        return f"{self.prefix}qlara.send-requests"

    def all(self) -> tuple[str, ...]:
        """Every topic the service uses."""
        return (self.delivery_events, self.status_changes, self.ingest_rejected, self.send_requests)


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """Everything configurable, with development defaults."""

    http_host: str = "127.0.0.1"
    http_port: int = 8080
    #: Connections the kernel queues before the server accepts them (``listen()`` backlog).
    http_backlog: int = 1024
    #: A port of its own for /metrics and /readyz (``QLARA_OPS_PORT``); None serves them on ``http_port``.
    ops_port: int | None = None
    ops_host: str = "127.0.0.1"
    public_base_url: str = ""
    kafka_bootstrap: str = DEFAULT_KAFKA_BOOTSTRAP
    #: A stable name of this process (a pod name, host and role): consumers join their groups as static members
    #: under it, so a restarted process gets its partitions back at once instead of after a rebalance.
    kafka_instance_id: str | None = None
    topics: Topics = Topics()
    topic_partitions: int = 6
    topic_replication: int = 1
    database_url: str = DEFAULT_DATABASE_URL
    db_pool_max: int = 10

    ingest_secret: str | None = None
    twilio_auth_token: str | None = None
    vonage_signature_secret: str | None = None
    vonage_signature_method: str = "md5hash"
    infobip_token: str | None = None
    whatsapp_app_secret: str | None = None
    whatsapp_verify_token: str | None = None
    rbm_client_token: str | None = None
    jasmin_token: str | None = None

    ingest_max_body_bytes: int = 1024 * 1024
    ingest_max_events: int = 1000
    ingest_timestamp_tolerance_s: int = 300
    #: How long a request waits for Kafka to acknowledge its events before answering 503.
    ingest_produce_timeout_s: float = 10.0
    ingest_retry_after_s: int = 5
    #: Ingest requests one process works on at once; past it the next one is answered 503 at once.
    ingest_max_in_flight: int = 1000
    #: ``Retry-After`` (s) of that 503: the cap frees up as soon as the requests in flight are answered.
    ingest_overload_retry_after_s: int = 1

    projector_batch_max: int = 2000
    #: Transactions a projector applies at once, each on its own connection for its own partitions of a
    #: fetched batch: one serial transaction leaves the Python loop idle while Postgres works, and the
    #: other core idle (benchmarks/README.md, "Projector lanes").
    projector_lanes: int = 4
    projector_batch_wait_ms: int = 50
    consumer_group_projector: str = "qlara-projector"

    #: Partner webhooks (dispatcher role and the webhook configuration API).
    webhook_require_https: bool = True
    webhook_allowed_networks: str = ""
    #: Ports a webhook URL may name besides 443 and 80 (any other port is refused at registration and delivery).
    webhook_allowed_ports: frozenset[int] = frozenset()
    webhook_retry_schedule: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE
    webhook_timeout_s: float = 15.0
    webhook_rotation_overlap_s: int = 24 * 3600
    webhook_disable_after_s: int = 5 * 24 * 3600
    webhook_concurrency_per_endpoint: int = 10
    webhook_concurrency_total: int = 200
    webhook_breaker_failures: int = 5
    webhook_breaker_cooldown_s: float = 30.0
    #: How long past the attempt timeout a lease outlives a dispatcher that died mid-attempt.
    webhook_lease_margin_s: float = 30.0
    #: A change still unsettled this long after the intake read it (waiting for a slot, or its attempt still
    #: running) is written to the retry schedule, so its partition moves on.
    webhook_spill_after_s: float = 1.0
    #: A change waiting for a slot of a webhook that is busy but answering spills after this long.
    webhook_queue_max_wait_s: float = 30.0
    consumer_group_dispatcher: str = "qlara-dispatcher"

    #: Blob storage (media, exports) and the key that signs download URLs.
    storage_dir: str = ".local/storage"
    #: The operator's word that ``storage_dir`` is one volume every api replica mounts (ReadWriteMany).
    storage_shared: bool = False
    #: How many api processes serve this deployment at most (the HPA's maxReplicas in deploy/k8s).
    api_replicas: int = 1
    url_signing_key: str | None = None
    download_url_ttl_s: int = 3600
    media_max_image_bytes: int = 5 * 1024 * 1024
    media_max_video_bytes: int = 100 * 1024 * 1024
    export_ttl_s: int = 24 * 3600
    #: Export jobs an account may have queued or running at once (more: 409 until one finishes).
    export_max_pending_per_account: int = 5
    #: Bytes of media an account may store in all.
    media_quota_bytes: int = 1024 * 1024 * 1024
    #: Contact imports: data rows per file, and what XLSX/XLS parsers would otherwise hold whole (413 past them).
    import_max_rows: int = 1_000_000
    import_xlsx_max_uncompressed_bytes: int = 512 * 1024 * 1024
    import_xlsx_max_part_bytes: int = 32 * 1024 * 1024
    import_xlsx_max_ratio: int = 200
    import_xls_max_bytes: int = 32 * 1024 * 1024
    #: Imports one api process runs at once, each on a connection of their own pool (never the API's pool),
    #: and how many of them one account may hold; past either, 503 / 429 with Retry-After.
    import_pool_max: int = 2
    import_max_per_account: int = 1
    #: Asynchronous imports (Prefer: respond-async): jobs one api process runs at once (0: it only queues them),
    #: jobs one account may have queued or running (429 beyond), how long a worker's lease lasts without
    #: renewal (a dead worker's job is resumed after it), and how long an ended job stays readable.
    import_workers: int = 1
    import_max_pending_per_account: int = 5
    import_lease_s: float = 60.0
    import_job_retention_s: int = 24 * 3600
    #: Campaign pricing per message (per SMS part) in ``currency``, and how long a campaign may stay SENDING.
    prices: Mapping[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_PRICES))
    currency: str = "EUR"
    campaign_deadline_s: int = 72 * 3600

    #: base64 of the 32-byte AES key that encrypts social-profile tokens at rest.
    social_token_key: str | None = None

    #: Rate-limit plans: name -> (requests per minute, requests per second burst).
    rate_limit_plans: Mapping[str, tuple[int, int]] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_PLANS))
    #: Active API keys an account may hold (each key has its own rate limit, so this caps an account's rate).
    api_keys_per_account: int = 10
    #: Failed API-key lookups a client address may cause per minute, per api process (0: no throttle).
    auth_failures_per_minute: int = 60
    #: Proxies whose X-Forwarded-For names the client (api/clientip.py): comma-separated CIDRs, none by default.
    trusted_proxies: str = ""
    #: How often (ms) the api's key cache confirms its LISTEN connection; entries are served only while it
    #: answered within 3 x this (0: no key cache, every request looks its key up).
    key_cache_check_ms: int = 100
    #: How often (ms) each api process reconciles its in-memory rate-limit counts with the others' through
    #: Postgres (0: count every request in Postgres as it comes, exact across processes).
    rate_limit_sync_ms: int = 100

    log_level: str = "info"
    log_format: str = "json"
    #: Run every command's event loop on uvloop (``QLARA_UVLOOP=true``); off by default: no measured gain yet.
    uvloop: bool = False

    @property
    def base_url(self) -> str:
        """The public base URL providers call (used to check URL-based signatures)."""
        return self.public_base_url or f"http://{self.http_host}:{self.http_port}"

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, dev_secrets: bool = False) -> Settings:
        """Parse settings from an environment mapping; ``dev_secrets`` fills unset secrets for ``make run``."""
        e = dict(env)
        if dev_secrets:
            for k, v in DEV_SECRETS.items():
                if not e.get(k):
                    e[k] = v

        def opt(name: str) -> str | None:
            v = e.get(name, "").strip()
            return v or None

        method = (opt("QLARA_VONAGE_SIGNATURE_METHOD") or "md5hash").lower()
        if method not in VONAGE_METHODS:
            raise ConfigError(f"QLARA_VONAGE_SIGNATURE_METHOD must be one of {', '.join(VONAGE_METHODS)}")
        ingest_secret = opt("QLARA_INGEST_SECRET")
        if ingest_secret is not None and not ingest_secret.startswith("whsec_"):
            raise ConfigError("QLARA_INGEST_SECRET must be a Standard Webhooks secret: whsec_ + base64")
        log_format = (opt("QLARA_LOG_FORMAT") or "json").lower()
        if log_format not in ("json", "console"):
            raise ConfigError("QLARA_LOG_FORMAT must be json or console")
        return cls(
            http_host=opt("QLARA_HTTP_HOST") or "127.0.0.1",
            http_port=_int(e, "QLARA_HTTP_PORT", 8080, 0, 65535),
            http_backlog=_int(e, "QLARA_HTTP_BACKLOG", 1024, 1, 65535),
            ops_port=_int(e, "QLARA_OPS_PORT", 0, 1, 65535) if opt("QLARA_OPS_PORT") else None,
            ops_host=opt("QLARA_OPS_HOST") or opt("QLARA_HTTP_HOST") or "127.0.0.1",
            public_base_url=(opt("QLARA_PUBLIC_BASE_URL") or "").rstrip("/"),
            kafka_bootstrap=opt("QLARA_KAFKA_BOOTSTRAP") or DEFAULT_KAFKA_BOOTSTRAP,
            kafka_instance_id=opt("QLARA_KAFKA_INSTANCE_ID"),
            topics=Topics(prefix=opt("QLARA_KAFKA_TOPIC_PREFIX") or ""),
            topic_partitions=_int(e, "QLARA_KAFKA_PARTITIONS", 6, 1, 10_000),
            topic_replication=_int(e, "QLARA_KAFKA_REPLICATION", 1, 1, 16),
            database_url=opt("QLARA_DATABASE_URL") or DEFAULT_DATABASE_URL,
            db_pool_max=_int(e, "QLARA_DB_POOL_MAX", 10, 2, 1000),
            ingest_secret=ingest_secret,
            twilio_auth_token=opt("QLARA_TWILIO_AUTH_TOKEN"),
            vonage_signature_secret=opt("QLARA_VONAGE_SIGNATURE_SECRET"),
            vonage_signature_method=method,
            infobip_token=opt("QLARA_INFOBIP_TOKEN"),
            whatsapp_app_secret=opt("QLARA_WHATSAPP_APP_SECRET"),
            whatsapp_verify_token=opt("QLARA_WHATSAPP_VERIFY_TOKEN"),
            rbm_client_token=opt("QLARA_RBM_CLIENT_TOKEN"),
            jasmin_token=opt("QLARA_JASMIN_TOKEN"),
            ingest_produce_timeout_s=_float(e, "QLARA_INGEST_PRODUCE_TIMEOUT", 10.0, 0.1, 300.0),
            ingest_max_in_flight=_int(e, "QLARA_INGEST_MAX_IN_FLIGHT", 1000, 1, 1_000_000),
            projector_batch_max=_int(e, "QLARA_PROJECTOR_BATCH_MAX", 2000, 1, 100_000),
            projector_lanes=_int(e, "QLARA_PROJECTOR_LANES", 4, 1, 16),
            projector_batch_wait_ms=_int(e, "QLARA_PROJECTOR_BATCH_WAIT_MS", 50, 0, 60_000),
            consumer_group_projector=opt("QLARA_PROJECTOR_GROUP") or "qlara-projector",
            webhook_require_https=_bool(e, "QLARA_WEBHOOK_REQUIRE_HTTPS", True),
            webhook_allowed_networks=opt("QLARA_WEBHOOK_ALLOWED_NETWORKS") or "",
            webhook_allowed_ports=_ports(e, "QLARA_WEBHOOK_ALLOWED_PORTS"),
            webhook_retry_schedule=_schedule(e, "QLARA_WEBHOOK_RETRY_SCHEDULE"),
            webhook_timeout_s=_float(e, "QLARA_WEBHOOK_TIMEOUT", 15.0, 0.1, 300.0),
            webhook_rotation_overlap_s=_int(e, "QLARA_WEBHOOK_ROTATION_OVERLAP", 24 * 3600, 0, 30 * 24 * 3600),
            webhook_disable_after_s=_int(e, "QLARA_WEBHOOK_DISABLE_AFTER", 5 * 24 * 3600, 1, 365 * 24 * 3600),
            webhook_concurrency_per_endpoint=_int(e, "QLARA_WEBHOOK_CONCURRENCY_PER_ENDPOINT", 10, 1, 1000),
            webhook_concurrency_total=_int(e, "QLARA_WEBHOOK_CONCURRENCY_TOTAL", 200, 1, 10_000),
            webhook_breaker_failures=_int(e, "QLARA_WEBHOOK_BREAKER_FAILURES", 5, 1, 1000),
            webhook_breaker_cooldown_s=_float(e, "QLARA_WEBHOOK_BREAKER_COOLDOWN", 30.0, 0.1, 3600.0),
            webhook_lease_margin_s=_float(e, "QLARA_WEBHOOK_LEASE_MARGIN", 30.0, 0.1, 3600.0),
            webhook_spill_after_s=_float(e, "QLARA_WEBHOOK_SPILL_AFTER", 1.0, 0.01, 300.0),
            webhook_queue_max_wait_s=_float(e, "QLARA_WEBHOOK_QUEUE_MAX_WAIT", 30.0, 0.01, 3600.0),
            consumer_group_dispatcher=opt("QLARA_DISPATCHER_GROUP") or "qlara-dispatcher",
            storage_dir=opt("QLARA_STORAGE_DIR") or ".local/storage",
            storage_shared=_bool(e, "QLARA_STORAGE_SHARED", False),
            api_replicas=_int(e, "QLARA_API_REPLICAS", 1, 1, 10_000),
            url_signing_key=opt("QLARA_URL_SIGNING_KEY"),
            download_url_ttl_s=_int(e, "QLARA_DOWNLOAD_URL_TTL", 3600, 10, 7 * 24 * 3600),
            media_max_image_bytes=_int(e, "QLARA_MEDIA_MAX_IMAGE_BYTES", 5 * 1024 * 1024, 1, 2**40),
            media_max_video_bytes=_int(e, "QLARA_MEDIA_MAX_VIDEO_BYTES", 100 * 1024 * 1024, 1, 2**40),
            export_ttl_s=_int(e, "QLARA_EXPORT_TTL", 24 * 3600, 60, 30 * 24 * 3600),
            export_max_pending_per_account=_int(e, "QLARA_EXPORT_MAX_PENDING_PER_ACCOUNT", 5, 1, 10_000),
            media_quota_bytes=_int(e, "QLARA_MEDIA_QUOTA_BYTES", 1024 * 1024 * 1024, 1, 2**50),
            import_max_rows=_int(e, "QLARA_IMPORT_MAX_ROWS", 1_000_000, 1, 100_000_000),
            import_xlsx_max_uncompressed_bytes=_int(e, "QLARA_IMPORT_XLSX_MAX_UNCOMPRESSED_BYTES",
                                                    512 * 1024 * 1024, 1024, 2**40),
            import_xlsx_max_part_bytes=_int(e, "QLARA_IMPORT_XLSX_MAX_PART_BYTES", 32 * 1024 * 1024, 1024, 2**40),
            import_xlsx_max_ratio=_int(e, "QLARA_IMPORT_XLSX_MAX_RATIO", 200, 2, 100_000),
            import_xls_max_bytes=_int(e, "QLARA_IMPORT_XLS_MAX_BYTES", 32 * 1024 * 1024, 1024, 2**40),
            import_pool_max=_int(e, "QLARA_IMPORT_POOL_MAX", 2, 1, 1000),
            import_max_per_account=_int(e, "QLARA_IMPORT_MAX_PER_ACCOUNT", 1, 1, 1000),
            import_workers=_int(e, "QLARA_IMPORT_WORKERS", 1, 0, 1000),
            import_max_pending_per_account=_int(e, "QLARA_IMPORT_MAX_PENDING_PER_ACCOUNT", 5, 1, 10_000),
            import_lease_s=_float(e, "QLARA_IMPORT_LEASE", 60.0, 1.0, 3600.0),
            import_job_retention_s=_int(e, "QLARA_IMPORT_JOB_RETENTION", 24 * 3600, 60, 30 * 24 * 3600),
            prices=_prices(e, "QLARA_PRICES"),
            currency=(opt("QLARA_CURRENCY") or "EUR").upper(),
            campaign_deadline_s=_int(e, "QLARA_CAMPAIGN_DEADLINE", 72 * 3600, 1, 30 * 24 * 3600),
            social_token_key=opt("QLARA_SOCIAL_TOKEN_KEY"),
            rate_limit_plans=_plans(e, "QLARA_RATE_LIMIT_PLANS"),
            api_keys_per_account=_int(e, "QLARA_API_KEYS_PER_ACCOUNT", 10, 1, 10_000),
            auth_failures_per_minute=_int(e, "QLARA_AUTH_FAILURES_PER_MINUTE", 60, 0, 1_000_000),
            trusted_proxies=opt("QLARA_TRUSTED_PROXIES") or "",
            key_cache_check_ms=_int(e, "QLARA_KEY_CACHE_CHECK_MS", 100, 0, 10_000),
            rate_limit_sync_ms=_int(e, "QLARA_RATE_LIMIT_SYNC_MS", 100, 0, 10_000),
            log_level=(opt("QLARA_LOG_LEVEL") or "info").lower(),
            log_format=log_format,
            uvloop=_bool(e, "QLARA_UVLOOP", False),
        )


#: What deploy/k8s/secret.yaml and the docs write where an operator must put a value of their own.
PLACEHOLDER: Final = "REPLACE_ME"


def production_problems(env: Mapping[str, str], settings: Settings, roles: Iterable[str]) -> list[str]:
    """Why ``serve`` must not start outside ``--dev`` with this environment (empty when it may).

    Placeholders and the development secrets are refused for every role; the api role also needs a download
    signing key every replica shares, and, when it runs as several replicas, storage they all see.
    """
    problems = [f"{name} still holds the placeholder {PLACEHOLDER}: set a real value"
                for name, value in sorted(env.items()) if name.startswith("QLARA_") and PLACEHOLDER in value]
    problems += [f"{name} is the development secret (docs/configuration.md): set a secret of your own"
                 for name, dev in DEV_SECRETS.items() if env.get(name, "").strip() == dev]
    if "api" in roles:
        if not settings.url_signing_key:
            problems.append("the api role needs QLARA_URL_SIGNING_KEY, the same on every replica: download links "
                            "signed with a random key fail on the other replicas and after a restart")
        if settings.api_replicas > 1 and not settings.storage_shared:
            problems.append(f"QLARA_API_REPLICAS is {settings.api_replicas} but QLARA_STORAGE_SHARED is not true: "
                            f"files stored in {settings.storage_dir} would be missing on the other replicas; "
                            "mount one ReadWriteMany volume there on every replica and set QLARA_STORAGE_SHARED=true")
    return problems


def _int(e: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = e.get(name, "").strip()
    if not raw:
        return default
    try:
        v = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer") from None
    if not lo <= v <= hi:
        raise ConfigError(f"{name} must be between {lo} and {hi}")
    return v


def _bool(e: Mapping[str, str], name: str, default: bool) -> bool:
    raw = e.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false")


def _prices(e: Mapping[str, str], name: str) -> dict[str, float]:
    raw = e.get(name, "").strip()
    prices = dict(DEFAULT_PRICES)
    for item in filter(None, (i.strip() for i in raw.split(","))):
        channel, _, value = item.partition(":")
        try:
            prices[channel.strip().upper()] = float(value)
        except ValueError:
            raise ConfigError(f"{name} must look like SMS:0.045,RCS:0.035,WHATSAPP:0.06") from None
        if channel.strip().upper() not in DEFAULT_PRICES or prices[channel.strip().upper()] < 0:
            raise ConfigError(f"{name}: channels are SMS, RCS, WHATSAPP and prices are >= 0")
    return prices


def _plans(e: Mapping[str, str], name: str) -> dict[str, tuple[int, int]]:
    raw = e.get(name, "").strip()
    if not raw:
        return dict(DEFAULT_PLANS)
    plans = dict(DEFAULT_PLANS)
    for item in raw.split(","):
        plan, _, limits = item.strip().partition(":")
        per_min, _, burst = limits.partition("/")
        try:
            plans[plan.strip()] = (int(per_min), int(burst))
        except ValueError:
            raise ConfigError(f"{name} must look like production:1000/50,trial:100/10") from None
        if not plan.strip() or plans[plan.strip()][0] < 1 or plans[plan.strip()][1] < 1:
            raise ConfigError(f"{name}: every plan needs a name and positive limits")
    return plans


def _ports(e: Mapping[str, str], name: str) -> frozenset[int]:
    """Comma-separated ports and inclusive ranges, e.g. ``8443,9000-9100``."""
    ports: set[int] = set()
    for item in filter(None, (i.strip() for i in e.get(name, "").split(","))):
        lo, _, hi = item.partition("-")
        try:
            first, last = int(lo), int(hi or lo)
        except ValueError:
            raise ConfigError(f"{name} must look like 8443,9000-9100") from None
        if not 1 <= first <= last <= 65535:
            raise ConfigError(f"{name}: ports are 1 to 65535, ranges low-high")
        ports.update(range(first, last + 1))
    return frozenset(ports)


def _schedule(e: Mapping[str, str], name: str) -> tuple[float, ...]:
    raw = e.get(name, "").strip()
    if not raw:
        return DEFAULT_RETRY_SCHEDULE
    try:
        delays = tuple(float(x) for x in raw.split(","))
    except ValueError:
        raise ConfigError(f"{name} must be comma-separated seconds, e.g. 0,5,300,1800") from None
    if not delays or any(d < 0 or d > 7 * 24 * 3600 for d in delays):
        raise ConfigError(f"{name} needs at least one delay, each between 0 and 604800 seconds")
    return delays


def _float(e: Mapping[str, str], name: str, default: float, lo: float, hi: float) -> float:
    raw = e.get(name, "").strip()
    if not raw:
        return default
    try:
        v = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number") from None
    if not lo <= v <= hi:
        raise ConfigError(f"{name} must be between {lo} and {hi}")
    return v
