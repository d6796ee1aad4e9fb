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
    options: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise LinkedOutError(
                f"--storage-option {pair!r} is not KEY=VALUE (e.g. aws_endpoint=http://127.0.0.1:9000)"
            )
        options[key.strip()] = value
    return options


def write_text(uri: str, name: str, text: str, storage_options: dict[str, str]) -> str:
    """Write `name` inside the dataset folder at `uri`; returns where it went."""
    if is_local(uri):
        path = Path(normalize(uri)) / name
        path.write_text(text, encoding="utf-8")
        return str(path)
    fs, root = _filesystem(uri, storage_options)
    target = f"{root.rstrip('/')}/{name}"
    with fs.open_output_stream(target) as out:
        out.write(text.encode("utf-8"))
    return f"{uri.rstrip('/')}/{name}"


def _filesystem(uri: str, options: dict[str, str]) -> tuple[pafs.FileSystem, str]:
    if uri.startswith(("s3://", "s3a://")):

        def opt(key: str, *env: str) -> str | None:
            return options.get(key) or next((os.environ[e] for e in env if os.environ.get(e)), None)

        endpoint = opt("aws_endpoint", "AWS_ENDPOINT_URL", "AWS_ENDPOINT")
        allow_http = (opt("allow_http", "AWS_ALLOW_HTTP") or "").lower() == "true"
        scheme = "http" if allow_http or (endpoint or "").startswith("http://") else "https"
        fs = pafs.S3FileSystem(
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
