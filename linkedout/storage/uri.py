"""Dataset locations: local paths or object-store URIs, and the options to reach them.

Lance reads credentials and endpoints from the usual environment variables (`AWS_ACCESS_KEY_ID`,
`AWS_ENDPOINT_URL`, ...) by itself; `--storage-option KEY=VALUE` passes Lance's own keys
(`aws_endpoint`, `aws_region`, `allow_http`, ...) when the environment is not the place.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from linkedout.errors import LinkedOutError
from linkedout.settings import setting


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def normalize(uri: str | Path) -> str:
    """Absolute path for local datasets (so `info` and cards say where), URIs unchanged."""
    uri = str(uri)
    if is_local(uri):
        return str(Path(uri.removeprefix("file://")).expanduser().resolve())
    return uri.rstrip("/")


def parse_storage_options(pairs: list[str] | None) -> dict[str, str]:
    """`KEY=VALUE` flags as a dict; refuses keys Lance does not know (it would ignore them)."""
    options: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise LinkedOutError(
                f"--storage-option {pair!r} is not KEY=VALUE (e.g. aws_endpoint=http://127.0.0.1:9000)"
            )
        options[key.strip()] = value
    check_storage_options(options)
    return options


STORAGE_OPTIONS_DOCS = "https://lancedb.github.io/lance/guide/object_store.html"

# HTTP client keys of every object store (object_store's ClientConfigKey); a store's own prefix
# (`aws_`, `azure_`, `google_`) may precede them.
_CLIENT_KEYS = frozenset(
    """allow_http allow_invalid_certificates connect_timeout default_content_type http1_only
    http2_only http2_keep_alive_interval http2_keep_alive_timeout http2_keep_alive_while_idle
    http2_max_frame_size pool_idle_timeout pool_max_idle_per_host proxy_url proxy_ca_certificate
    proxy_excludes randomize_addresses timeout user_agent""".split()
)
# object_store's AmazonS3ConfigKey, MicrosoftAzureConfigKey and GoogleConfigKey (with their
# aliases), and the keys Lance reads itself.
_STORE_KEYS = frozenset(
    """aws_access_key_id access_key_id aws_secret_access_key secret_access_key
    aws_default_region default_region aws_region region aws_bucket aws_bucket_name bucket
    bucket_name aws_endpoint_url aws_endpoint endpoint_url endpoint aws_session_token aws_token
    session_token token aws_imdsv1_fallback imdsv1_fallback aws_virtual_hosted_style_request
    virtual_hosted_style_request aws_s3_express s3_express aws_metadata_endpoint
    metadata_endpoint aws_unsigned_payload unsigned_payload aws_checksum_algorithm
    checksum_algorithm aws_copy_if_not_exists copy_if_not_exists aws_conditional_put
    conditional_put aws_container_credentials_relative_uri aws_container_credentials_full_uri
    aws_container_authorization_token_file aws_skip_signature skip_signature
    aws_disable_tagging disable_tagging aws_request_payer request_payer
    aws_server_side_encryption aws_sse_kms_key_id aws_sse_bucket_key_enabled
    aws_sse_customer_key_base64 aws_profile profile aws_role_arn aws_role_session_name
    aws_web_identity_token_file aws_external_id
    azure_storage_account_name account_name azure_storage_account_key azure_storage_master_key
    account_key master_key access_key azure_storage_client_id azure_client_id client_id
    azure_storage_client_secret azure_client_secret client_secret azure_storage_tenant_id
    azure_storage_authority_id azure_tenant_id azure_authority_id tenant_id authority_id
    azure_storage_authority_host authority_host azure_storage_sas_key azure_storage_sas_token
    sas_key sas_token azure_storage_token bearer_token azure_storage_use_emulator use_emulator
    azure_storage_endpoint azure_endpoint azure_msi_endpoint azure_identity_endpoint
    identity_endpoint msi_endpoint azure_object_id object_id azure_msi_resource_id
    msi_resource_id azure_federated_token_file federated_token_file azure_use_fabric_endpoint
    use_fabric_endpoint azure_use_azure_cli use_azure_cli azure_skip_signature
    azure_container_name container_name azure_disable_tagging azure_fabric_token_service_url
    azure_fabric_workload_host azure_fabric_session_token azure_fabric_cluster_identifier
    google_service_account service_account google_service_account_path service_account_path
    google_service_account_key service_account_key google_bucket google_bucket_name
    google_application_credentials google_skip_signature
    client_max_retries client_retry_timeout download_retry_count block_size expires_at_millis
    use_opendal""".split()
)


_STORE_PREFIXES = ("aws_", "azure_", "google_")


def _known_storage_option(key: str) -> bool:
    key = key.lower()
    if key in _STORE_KEYS or key in _CLIENT_KEYS:
        return True
    return any(key.startswith(p) and key[len(p) :] in _CLIENT_KEYS for p in _STORE_PREFIXES)


def check_storage_options(options: dict[str, str]) -> None:
    """Lance passes unknown keys by without a word (a typo'd `aws_endpoint` would send the
    request to AWS itself): refuse them, naming the keys that were likely meant."""
    import difflib

    for key in options:
        if _known_storage_option(key):
            continue
        known = sorted(_STORE_KEYS | _CLIENT_KEYS)
        close = difflib.get_close_matches(key.lower(), known, n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise LinkedOutError(
            f"--storage-option {key!r} is not a key Lance knows (it would ignore it): {hint}"
            f"the keys are listed at {STORAGE_OPTIONS_DOCS}"
        )


def describe_storage_error(options: dict[str, str], error: BaseException) -> str:
    """What went wrong reaching an object store, in a few words and what to do: one line after
    `cannot ... URI: `."""
    text = " ".join(str(error).split())
    low = text.lower()
    given = {k.lower(): v for k, v in options.items()}
    keys = ("aws_endpoint", "aws_endpoint_url", "endpoint_url", "endpoint")
    where = next((given[k] for k in keys if given.get(k)), None) or os.environ.get(
        "AWS_ENDPOINT_URL"
    )
    if "credential" in low and ("failed" in low or "no " in low or "missing" in low):
        return (
            "found no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or pass -s aws_access_key_id=... -s aws_secret_access_key=...)"
        )
    if "nosuchbucket" in low:
        return "its bucket does not exist: create the bucket first, or check the URI"
    if any(
        s in low
        for s in ("accessdenied", "invalidaccesskeyid", "signaturedoesnotmatch", "403 forbidden")
    ):
        return "access was denied: check the credentials and the bucket's permissions"
    if any(
        s in low
        for s in (
            "error sending request",
            "connection refused",
            "timed out",
            "dns error",
            "connect error",
        )
    ):
        at = f" at {where}" if where else ""
        return (
            f"cannot reach the object store{at}: check the endpoint "
            "(-s aws_endpoint=URL, AWS_ENDPOINT_URL) and that the server is up"
        )
    return _short(text)


def _short(text: str, limit: int = 300) -> str:
    # Lance appends Rust source locations; they help no user.
    text = text.split(", /")[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def write_text(uri: str, name: str, text: str, storage_options: dict[str, str]) -> str:
    """Write `name` inside the dataset folder at `uri`; returns where it went."""
    if is_local(uri):
        path = Path(normalize(uri)) / name
        path.write_text(text, encoding="utf-8")
        return str(path)
    fs, root = filesystem(uri, storage_options)
    target = f"{root.rstrip('/')}/{name}"
    with fs.open_output_stream(target) as out:
        out.write(text.encode("utf-8"))
    return f"{uri.rstrip('/')}/{name}"


def list_names(uri: str, storage_options: dict[str, str]) -> list[str]:
    """Names of the objects or folders directly under the object-store prefix `uri`."""
    fs, root = filesystem(uri, storage_options)
    entries = fs.get_file_info(pafs.FileSelector(root.rstrip("/"), allow_not_found=True))
    return sorted(e.base_name for e in entries)


def filesystem(uri: str, options: dict[str, str]) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem that reaches `uri` with Lance's `options` (or the AWS_*
    environment), and the path of `uri` inside it."""
    if uri.startswith(("s3://", "s3a://")):

        def opt(key: str, *env: str) -> str | None:
            return options.get(key) or next((os.environ[e] for e in env if os.environ.get(e)), None)

        endpoint = opt("aws_endpoint", "AWS_ENDPOINT_URL", "AWS_ENDPOINT")
        allow_http = (opt("allow_http", "AWS_ALLOW_HTTP") or "").lower() == "true"
        scheme = "http" if allow_http or (endpoint or "").startswith("http://") else "https"
        fs = pafs.S3FileSystem(
            # Bounded: an endpoint that does not answer must fail in seconds, not minutes.
            connect_timeout=5,
            request_timeout=60,
            retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=3),
            access_key=opt("aws_access_key_id", "AWS_ACCESS_KEY_ID"),
            secret_key=opt("aws_secret_access_key", "AWS_SECRET_ACCESS_KEY"),
            session_token=opt("aws_session_token", "AWS_SESSION_TOKEN"),
            region=opt("aws_region", "AWS_REGION", "AWS_DEFAULT_REGION"),
            endpoint_override=endpoint.split("://", 1)[-1] if endpoint else None,
            scheme=scheme,
        )
        return fs, uri.split("://", 1)[1]
    return pafs.FileSystem.from_uri(uri)


STORAGE_OPTIONS_HELP = (
    "Object-store option KEY=VALUE passed to Lance (e.g. aws_endpoint=http://host:9000, "
    "allow_http=true); repeatable. The usual AWS_* environment variables work too."
)


def storage_options_setting() -> Any:
    """The `storage_options` setting of every config that reaches an object store."""
    return setting(
        default_factory=dict,
        flag="storage-option",
        short="-s",
        cli_type=list[str] | None,
        parse=parse_storage_options,
        help=STORAGE_OPTIONS_HELP,
    )
